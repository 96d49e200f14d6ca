"""The URL forms of docs/topologies.md: what each names, and a specific error,
raised by the constructor, for everything else."""

from __future__ import annotations

import pytest

from twotier import ConfigurationError, TwoTierCache
from twotier._topology import Target, parse


def test_a_redis_url_is_asked_whether_it_is_a_cluster_node() -> None:
    target = parse("redis://user:pw@cache.internal:6380/2?protocol=2")
    assert target == Target(None, "redis://user:pw@cache.internal:6380/2?protocol=2", False)
    assert parse("rediss://h:6380/0").tls


def test_a_cluster_url_says_so() -> None:
    target = parse("rediss+cluster://node-1:7000")
    assert (target.kind, target.url, target.tls) == ("cluster", "rediss://node-1:7000", True)


def test_a_sentinel_url_names_sentinels_service_database_and_both_credentials() -> None:
    target = parse(
        "redis+sentinel://app:pw@s1:26379,s2:26380,[::1]:26381/erp-master/3"
        "?sentinel_password=spw&sentinel_username=watch&ssl_ca_certs=/ca.pem"
    )
    assert target.kind == "sentinel"
    assert target.sentinels == (("s1", 26379), ("s2", 26380), ("::1", 26381))
    assert target.service == "erp-master"
    assert target.sentinel_options == {"password": "spw", "username": "watch"}
    # the master's connection: its credentials, its database, the other arguments
    assert target.url == "redis://app:pw@master/3?ssl_ca_certs=%2Fca.pem"
    assert "pw" not in target.described()  # the sentinel_password is not in it either


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://cache:6379", "unsupported redis_url scheme 'http'"),
        ("valkey://cache:6379", "unsupported redis_url scheme 'valkey'"),
        ("unix:///tmp/redis.sock", "unsupported redis_url scheme 'unix'"),
        ("redis://:6379/0", "names no host"),
        ("redis+cluster://node:7000/3", "database 0 only"),
        ("redis+sentinel://s1:26379,s2:26379", "redis+sentinel://host:port,host:port/service"),
        ("redis+sentinel://s1,s2:26379/svc", "sentinel address 's1'"),
        ("redis+sentinel://s1:x/svc", "must be host:port"),
        ("redis+sentinel:///svc", "redis+sentinel://host:port,host:port/service"),
        ("redis+sentinel://s1:1/svc/0/extra", "redis+sentinel://host:port,host:port/service"),
    ],
)
def test_anything_else_fails_in_the_constructor_saying_why(url: str, says: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        TwoTierCache(redis_url=url)
    assert says in str(raised.value)


def test_a_password_never_shows_in_the_error() -> None:
    with pytest.raises(ConfigurationError) as raised:
        TwoTierCache(redis_url="redis+sentinel://app:hunter2@s1:1")
    assert "hunter2" not in str(raised.value)


def test_the_url_must_be_text() -> None:
    with pytest.raises(ConfigurationError, match="redis_url must be a str"):
        TwoTierCache(redis_url=b"redis://h:1")  # type: ignore[arg-type]


def test_confirm_replicas_is_a_count() -> None:
    for bad in (-1, 1.5, True, "1"):
        with pytest.raises(ConfigurationError, match="confirm_replicas"):
            TwoTierCache(confirm_replicas=bad)  # type: ignore[arg-type]
