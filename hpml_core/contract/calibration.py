"""A site's speed as its finished runs measured it: the rates the step-time model
(``hpml_core.contract.step_time``) otherwise takes from the site profile's assumptions.

``hpml calibrate EXP... --site SITE`` (``jobs.calibrate``) fits them from the profiled steps of
the completed runs (``hpml_core.contract.step_parts``) and writes one file per site, beside the
user's site profiles: ``<$HPML_SITES or ~/.config/hpml/sites>/calibrations/<site>.yaml``. A site
has one kind of device, and so one calibration. What is fitted, each rate with the number of
points behind it and their spread (the largest deviation of one point's own rate from the fit):

- **compute**: model TFLOP/s per rank, separately for the forward, the backward and the
  recomputation, per precision regime's computation (bf16 under autocast, a bf16 model; in fp32
  per training path) and compiled or not; on a CPU also per number of processes on the node, since they
  share its cores (4 ranks on 2 cores each compute at about half one process's pace);
- **optimizer**: the GB/s at which the update reads and writes its bytes (``optimizer_bytes``);
- **collectives**: per collective kind, within a node and between nodes, a latency per
  collective and a bus bandwidth (time in flight = count × latency + bytes sent ÷ bandwidth); the
  latency where the points separate it from the bandwidth, else only the bandwidth (latency 0,
  said);
- **hidden**: per layout (mode) and collective kind, the share of the time in flight that
  overlap hid;
- **overhead**: per key as compute's, the seconds per step of data fetching and of the rest
  (host overhead, idle), which the assumed model does not predict.

A rate the runs do not determine stays the site profile's assumption, and the prediction's
``how`` names which were calibrated and which assumed.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from hpml_core.contract.config import ZERO_STAGES, Mode
from hpml_core.contract.precision import PrecisionRegime

SCOPES = ("intra-node", "inter-node")
COMPUTE_FITTED = ("forward", "backward", "recompute")
OVERHEAD_PARTS = ("data", "other")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Fit(_Strict):
    value: float = Field(description="the fitted rate, in the unit its table names")
    points: int = Field(description="profiled rank-steps behind it")
    spread_pct: float = Field(description="the largest deviation of one point's own rate from the fit, percent")


class LinkFit(_Strict):
    gb_per_s: float = Field(description="bus bandwidth: bytes one rank sends (ring collectives) per second, 1e9")
    latency_s: float = Field(description="time per collective beyond its bytes")
    latency_fitted: bool = Field(description="false: the points did not separate latency from bandwidth, taken as 0")
    points: int
    spread_pct: float = Field(description="the largest deviation of one point's time from the fit's, percent")


class Calibration(_Strict):
    site: str
    device_type: str = Field(description="cuda or cpu: the runs' device")
    device_name: str
    made_on: str = Field(description="the date it was fitted (UTC, YYYY-MM-DD)")
    experiments: list[str]
    runs: list[str] = Field(description="the completed runs it was fitted from, <experiment>/<run>")
    compute_tflops: dict[str, dict[str, Fit]] = Field(description="rate key -> part -> model TFLOP/s per rank")
    optimizer_gb_per_s: dict[str, Fit] = Field(description="rate key -> GB/s of the optimizer's bytes")
    overhead_s: dict[str, dict[str, Fit]] = Field(description="rate key -> data or other -> seconds per step")
    links: dict[str, dict[str, LinkFit]] = Field(description="intra-node or inter-node -> collective kind -> fit")
    hidden_share: dict[str, dict[str, Fit]] = Field(description="mode -> collective kind -> share of in-flight "
                                                                "time hidden by overlap (0 to 1)")

    def describe(self) -> str:
        return f"calibrated from {len(self.runs)} runs of {', '.join(self.experiments)}, {self.made_on}"


# In fp32 every path multiplies in fp32, so the regime's computation does not tell them apart;
# their pace differs all the same: the demo's 1-process fp32 runs (commit f42cb5f, a CPU)
# reached 0.040 to 0.048 model TFLOP/s on the PyTorch path and 0.023 to 0.027 under ZeRO-3's
# hooks.
FP32_PATHS = {**dict.fromkeys(ZERO_STAGES, "DeepSpeed"), "fsdp2": "FSDP2"}


def rate_key(mode: Mode, precision: PrecisionRegime, device_type: str, ranks_per_node: int, compiled: bool) -> str:
    """Which compute, optimizer and overhead rates apply: how the model computes (its matrix dtype,
    and under autocast or cast: a CPU runs autocast's bf16 at another pace than a bf16 model; in
    fp32, the path: PyTorch's, DeepSpeed's or FSDP2's), whether it is compiled, and on a CPU the
    processes that share its cores."""
    if precision.compute == "fp32":
        how = " ".join(filter(None, [precision.matmul_dtype, FP32_PATHS.get(mode)]))
    else:
        how = f"{precision.matmul_dtype} {precision.compute}" + (", FP8 linears" if precision.fp8_linears else "")
    return ", ".join([how, *(["compiled"] if compiled else []),
                      *([f"{ranks_per_node} per node"] if device_type == "cpu" else [])])
