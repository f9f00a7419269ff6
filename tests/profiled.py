"""What every profiled rank file must hold, wherever it ran: each step's parts add up to the
step, exposed and hidden communication make up what was in flight, and the collectives move
the contract's bytes kind by kind (``hpml_core.contract.collectives``, over the backend the run
used). Shared by test_parallel_equivalence.py (CPU ranks over gloo) and test_gpu.py (the
device's timeline, over NCCL or, for ranks sharing the GPU, gloo)."""

from __future__ import annotations

import pytest

from hpml_core.contract import collectives, step_parts
from hpml_core.contract.config import TrainConfig
from hpml_core.contract.layout import Layout
from hpml_core.model import model_dims


def expected_collectives(record: dict, drop: int | None = None) -> dict[str, collectives.KindTotal]:
    """The contract's collectives for a rank file's run; ``drop``: leave that one out (a wrong formula)."""
    return collectives.by_kind([c for i, c in enumerate(contract_collectives(record)) if i != drop])


def contract_collectives(record: dict) -> list[collectives.Collectives]:
    config = TrainConfig.model_validate(record["config"])
    dims = model_dims(record["model"]["name"], record["model"]["vocab_size"])
    return collectives.per_step(config, dims, Layout(record["world_size"], record["tp_size"]),
                                config.backend_on(record["device_type"]))


def measured_collectives(record: dict, step: int = 0) -> dict[str, collectives.KindTotal]:
    return {c["kind"]: collectives.KindTotal(c["count"], c["bytes"])
            for c in record["profile"]["steps"][step]["collectives"]}


def assert_profile_holds(record: dict) -> None:
    """The parts of each profiled step add up to its wall time within 5 % (the part of a step
    the sweep cannot place: the profiler's own events at its edges), forward, backward and the
    optimizer took time, and the collectives are the contract's."""
    profile = record["profile"]
    assert profile is not None, record["profile_missing_reason"]
    expected = expected_collectives(record)
    for i, step in enumerate(profile["steps"]):
        assert set(step["parts_s"]) == set(step_parts.PARTS)
        assert sum(step["parts_s"].values()) == pytest.approx(step["wall_s"], rel=0.05)
        assert step["parts_s"]["forward"] > 0 and step["parts_s"]["backward"] > 0
        assert step["parts_s"]["optimizer"] > 0
        exposed = sum(step["parts_s"][kind] for kind in step_parts.COLLECTIVE_KINDS)
        assert exposed + step["comm_hidden_s"] == pytest.approx(step["comm_in_flight_s"], abs=1e-6)
        assert collectives.mismatches(expected, measured_collectives(record, i)) == []
