"""Small applications that `integration/test_process_models.py` runs under real
process models (multiprocessing, pre-fork servers, Celery), each a module of
its own so that a spawned or forked process can import it."""
