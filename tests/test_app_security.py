"""The app's safety defaults and its behaviour when a run folder disappears under it."""

from __future__ import annotations

import tomllib
from pathlib import Path
from urllib.parse import urlparse

import pytest

from bench.browser import app_server
from exbl_core import runs
from studio import pages
from tests.test_app_pages import copy_run, finished_run, open_page, runs_dir  # noqa: F401 - fixtures

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / ".streamlit" / "config.toml"


def _listening_addresses(port: int) -> list[str]:
    """Local addresses of LISTEN sockets on ``port``, read from /proc/net/tcp and tcp6."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.append(address)
    return found


LOOPBACK = {"0100007F", "00000000000000000000000001000000"}  # 127.0.0.1 and ::1 as the kernel prints them


def test_config_keeps_xsrf_on_usage_stats_off_and_binds_localhost() -> None:
    cfg = tomllib.loads(CONFIG.read_text())
    assert cfg["server"]["address"] == "localhost"
    assert cfg["server"]["enableXsrfProtection"] is True
    assert cfg["browser"]["gatherUsageStats"] is False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net to read bound addresses")
def test_server_listens_on_loopback_only(tmp_path: Path) -> None:
    with app_server(tmp_path / "runs", tmp_path / "streamlit.log") as (url, _, _):
        addresses = _listening_addresses(urlparse(url).port)
        assert addresses, "no listening socket found for the app's port"
        assert set(addresses) <= LOOPBACK, f"the app listens beyond loopback: {addresses}"


@pytest.mark.slow
@pytest.mark.parametrize("page", [pages.EXPLORE, pages.REFINE, pages.COMPARE])
def test_a_run_folder_deleted_while_open_gives_an_empty_state_not_a_traceback(
    runs_dir: Path,  # noqa: F811
    finished_run: Path,  # noqa: F811
    page: str,
) -> None:
    run = copy_run(finished_run, runs_dir, (runs.UNREFINED, runs.PAIR, runs.refined_file("exbl"), runs.METRICS))
    at = open_page(page)
    assert not at.exception
    for path in sorted(run.path.iterdir()):
        path.unlink()
    run.path.rmdir()
    at.run()
    assert not at.exception
    assert [str(e.value) for e in at.info] == ["No run yet: choose the data on Data and model."]
    assert "Data_and_model" in [link.proto.page for link in at.get("page_link")]
