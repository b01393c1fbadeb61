"""``bench/upstream_requests.py``: a query's upstream requests do not grow with the data.

The bench script runs here at 10 and 1,000 demo customers with every ERP
dialect of ``fonte demo --erp`` (``ERP_DIALECTS``, the generic ``rest``
dialect included). The 1,000-customer query reads 500 customers, the page
size limit.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from gateway.demo.launch import ERP_DIALECTS

BENCH_SCRIPT = Path(__file__).parents[2] / "bench" / "upstream_requests.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_upstream_requests", BENCH_SCRIPT)
    assert spec is not None and spec.loader is not None, BENCH_SCRIPT
    module = importlib.util.module_from_spec(spec)
    # dataclasses look the module up by name while the script runs.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.loopback
async def test_requests_constant_across_sizes(tmp_path: Path) -> None:
    bench = _bench()

    counts = await bench.sweep(ERP_DIALECTS, (10, 1000), "ten-fields", tmp_path)

    assert [(c.dialect, c.customers, c.rows) for c in counts] == [
        (dialect, size, min(size, 500)) for size in (10, 1000) for dialect in ERP_DIALECTS]
    for count in counts:
        # One SOQL query, then one read each of res.partner and res.partner.bank.
        assert count.requests == {"crm": 1, "erp": 2}, (count.dialect, count.customers)
