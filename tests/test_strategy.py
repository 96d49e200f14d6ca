"""twotier.strategy: the caching strategy generated from code (the example ERP service)."""

import json
from pathlib import Path

import pytest

from twotier.strategy import main, may_match

COMPOSE = str(Path(__file__).resolve().parent.parent / "compose")


def test_templates_match_when_they_can_render_the_same_tag() -> None:
    assert may_match("charge:{charge_id}", "charge:{id}")
    assert may_match("charge:{charge_id}", "charge:7")
    assert may_match("charges", "charges")
    assert not may_match("charge:{id}", "charges")
    assert not may_match("charges:list", "list")
    assert may_match("category:{category}", "category:{old}")


def test_the_erp_strategy_lists_reads_writes_and_their_links(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["erp.app", "--app-dir", COMPOSE, "--json"]) == 0
    strategy = json.loads(capsys.readouterr().out)
    reads = {c["function"]: c for c in strategy["cached"]}
    charge = reads["erp.charges.get_charge"]
    assert charge["routes"] == ["GET /charges/{charge_id}"]
    assert charge["key"] == "erp.charges.get_charge.http(charge_id)"
    assert charge["ignored"] == ["session"]
    assert (charge["ttl"], charge["tags"]) == (180, ["charges", "charge:{charge_id}"])
    assert charge["invalidated_by"] == ["erp.charges.update_charge"]
    dashboard = reads["erp.customers.dashboard"]
    assert "user:{user_id}" in dashboard["tags"]
    assert dashboard["key"].endswith("(user_id)")  # kept in the key: one entry per user
    assert "erp.charges.update_charge" in dashboard["invalidated_by"]
    writes = {w["function"]: w for w in strategy["writes"]}
    assert writes["erp.charges.update_charge"]["routes"] == ["PUT /charges/{charge_id}"]
    assert "erp.reports.revenue" in writes["erp.charges.update_charge"]["invalidates"]
    assert "erp.articles.get_article" not in writes["erp.charges.update_charge"]["invalidates"]


def test_markdown(capsys: pytest.CaptureFixture[str]) -> None:
    main(["erp.app", "--app-dir", COMPOSE])
    page = capsys.readouterr().out
    assert page.startswith("# Caching strategy of `erp.app`")
    assert "| `charges.get_charge` | GET /charges/{charge_id} (HTTP: ETag, max-age) |" in page


def test_the_strategy_in_the_docs_is_current(capsys: pytest.CaptureFixture[str]) -> None:
    main(["erp.app", "--app-dir", COMPOSE])
    generated = capsys.readouterr().out.split("\n", 2)[2]
    page = (Path(COMPOSE).parent / "docs" / "erp-example.md").read_text()
    documented = page.split("<!-- strategy:begin -->\n", 1)[1].split("<!-- strategy:end -->")[0]
    assert documented == generated, "regenerate docs/erp-example.md (see its strategy section)"
