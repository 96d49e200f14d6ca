import twotier


def test_public_surface_is_pinned() -> None:
    exported = {name for name in dir(twotier) if not name.startswith("_")}
    modules = {"testing", "cli", "fastapi", "strategy", "prometheus", "otel"}  # public, on demand
    assert set(twotier.__all__) - {"__version__"} == exported - modules


def test_every_error_derives_from_the_root() -> None:
    errors = [
        getattr(twotier, n)
        for n in twotier.__all__
        if n.endswith("Error") or n.startswith("Backend")
    ]
    assert errors
    for error in errors:
        assert issubclass(error, twotier.TwoTierError), error


def test_default_cache_is_memory_only_without_a_url(monkeypatch) -> None:
    monkeypatch.delenv("TWOTIER_REDIS_URL", raising=False)
    cache = twotier.cache_from_env({})
    assert cache.redis_url is None
    assert cache.default_ttl == 300


def test_default_cache_reads_environment() -> None:
    cache = twotier.cache_from_env(
        {
            "TWOTIER_REDIS_URL": "redis://127.0.0.1:1/0",
            "TWOTIER_NAMESPACE": "erp",
            "TWOTIER_DEFAULT_TTL": "60",
            "TWOTIER_L1_MAXSIZE": "5",
        }
    )
    assert (cache.redis_url, cache.namespace, cache.default_ttl) == (
        "redis://127.0.0.1:1/0",
        "erp",
        60,
    )


def test_bad_environment_names_the_variable() -> None:
    import pytest

    with pytest.raises(twotier.ConfigurationError, match="TWOTIER_DEFAULT_TTL"):
        twotier.cache_from_env({"TWOTIER_DEFAULT_TTL": "five minutes"})


async def test_default_cache_starts_lazily_on_first_use() -> None:
    from twotier import cache

    calls = []

    @cache.cached(ttl=60, tags=["articles", "category:{category}"])
    async def articles(category: str) -> list[str]:
        calls.append(category)
        return [category]

    assert await articles("news") == ["news"]  # no start() anywhere: started on first use
    assert await articles("news") == ["news"]
    cache.invalidate_tag("category:news")  # the seed's un-awaited style
    assert await articles("news") == ["news"]
    assert calls == ["news", "news"]
