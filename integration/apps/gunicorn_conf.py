"""gunicorn's configuration for the process-model tests: docs/deployment.md's
logging set-up, verbatim (the tests read twotier's lines, pid and instance
included, from the server's output)."""

import logging.config

FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] "

logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "generic": {"format": FORMAT + "%(message)s"},
        "twotier": {"format": FORMAT + "twotier[%(instance)s/%(tier)s] %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "generic"},
        "twotier": {"class": "logging.StreamHandler", "formatter": "twotier"},
    },
    "root": {"level": "INFO", "handlers": ["console"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["console"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": ["console"], "propagate": False},
        "twotier": {"level": "INFO", "handlers": ["twotier"], "propagate": False},
    },
}

if __name__ == "__main__":  # (not run by gunicorn: checks the dictionary)
    logging.config.dictConfig(logconfig_dict)
    logging.getLogger("gunicorn.error").info("configured")
