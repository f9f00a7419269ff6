"""The per-rank result file, ``rank-<k>.json``: its schema and how it is written.

Every process of a run writes one, whether the run completed, failed or ran out of memory,
so a report can tell "slow" from "broken" from "never ran". The pydantic model below is the
schema; ``hpml_core/contract/schemas/rank_file.schema.json`` is its JSON Schema export for other tools
(``python -m hpml_core.contract.rank_file``, ``make schema``, regenerates it, and a test keeps the two in step).

Throughput counts every token once: the tokens of one data-parallel replica are shared by its
tensor-parallel ranks, so a rank's share is (batch × seq_len) / tp_size, and the run's figure
is the global batch's tokens over the slowest rank's median step time.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from hpml_core.contract.atomic import atomic_write, atomic_write_json
from hpml_core.contract.attempts import rank_file_path
from hpml_core.contract.config import ConfigSource, Mode, TrainConfig
from hpml_core.contract.energy import Energy
from hpml_core.contract.precision import PrecisionRegime
from hpml_core.contract.status_file import Outcome
from hpml_core.contract.step_parts import StepProfile

# 2: ``status`` in the run states' words (COMPLETED, FAILED, OUT_OF_MEMORY, STOPPED); version 1
# wrote them lower-case, and "oom": still read, as the words they meant (``status_file.Outcome``).
SCHEMA_VERSION = 2
SCHEMA_PATH = Path(__file__).parent / "schemas" / "rank_file.schema.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Versions(_Strict):
    python: str
    torch: str
    deepspeed: str | None
    transformers: str | None
    cuda: str | None = Field(description="CUDA version torch was built with; null on a CPU build")
    torchao: str | None = Field(None, description="torchao's version, whose float8 layers an --fp8 run trains "
                                                  "with; null where it is not installed")


class Slurm(_Strict):
    job_id: str | None
    array_job_id: str | None
    array_task_id: str | None
    node_list: str | None
    node: str | None = Field(description="the Slurm node this rank ran on (SLURMD_NODENAME); differs from hostname "
                             "when one host runs several emulated nodes")
    restart_count: int = Field(description="how many times Slurm requeued the job before this attempt")

    @property
    def job(self) -> str | None:
        """The job as sacct, squeue and scancel name it: ``<array job id>_<task>`` for a task of
        a job array (its own ``job_id`` is a number of its own), else ``job_id``."""
        if self.array_job_id and self.array_task_id:
            return f"{self.array_job_id}_{self.array_task_id}"
        return self.job_id


class ModelInfo(_Strict):
    name: str
    n_layer: int
    n_head: int
    n_embd: int
    vocab_size: int = Field(description="padded to a multiple of 128")
    seq_len: int
    params_total: int
    params_non_embedding: int = Field(description="without token and position embeddings (Kaplan et al.)")
    params_matmul: int = Field(description="N of the FLOP formula: weights multiplying activations")


class Throughput(_Strict):
    timing: str = Field(description="what one step time measures")
    timed_steps: int
    step_times_s: list[float]
    step_time_median_s: float
    step_time_mean_s: float
    run_step_time_median_s: float = Field(description="the slowest rank's median: the run goes at its pace")
    tokens_per_step: int = Field(description="whole run, each token once")
    samples_per_step: int = Field(description="whole run (global batch)")
    rank_tokens_per_s: float = Field(description="this rank's share: its replica's tokens / tp_size, per second")
    rank_samples_per_s: float
    run_tokens_per_s: float
    run_samples_per_s: float


class Flops(_Strict):
    formula: str
    n_params: int = Field(description="the N used in the formula")
    flops_per_token: int
    achieved_tflops_per_s: float = Field(description="model TFLOP/s per device: run total / world size")
    peak_tflops_per_s: float | None
    peak_source: str | None
    mfu: float | None = Field(description="achieved / peak, a fraction in [0, 1]")
    mfu_missing_reason: str | None


class PhasePeak(_Strict):
    """Peak memory over one phase of the process (its high-water marks reset at the phase's start)."""

    cuda_max_allocated_bytes: int | None = Field(description="CUDA max_memory_allocated over the phase; null on a CPU")
    cuda_max_reserved_bytes: int | None
    cpu_rss_bytes: int | None = Field(
        description="the process's resident-set high-water mark over the phase (Linux VmHWM, reset through "
                    "/proc/self/clear_refs); null where it cannot be reset (see Memory.cpu_reset_missing_reason)")


class Memory(_Strict):
    cuda_max_allocated_bytes: int | None = Field(description="whole process, setup included")
    cuda_max_reserved_bytes: int | None
    cpu_peak_rss_bytes: int = Field(description="the whole process's peak resident set (getrusage), setup included")
    setup: PhasePeak | None = Field(None, description="process start to the end of setup: model built, "
                                    "parallelized, checkpoint restored (null in files written before hpml measured it)")
    training: PhasePeak | None = Field(None, description="first timed step to the last step: the figure the report "
                                       "compares; null when no step was timed")
    cpu_reset_missing_reason: str | None = Field(None, description="why the CPU high-water mark could not be reset")

    def peak(self) -> tuple[int, str]:
        """This rank's peak memory figure and its name: the training phase's, where measured:
        CUDA max_memory_allocated on a GPU, the RSS high-water mark on a CPU; otherwise the
        whole process's (its name says so: "cuda_max_allocated_process", "cpu_peak_rss")."""
        if self.training is not None:
            if self.training.cuda_max_allocated_bytes is not None:
                return self.training.cuda_max_allocated_bytes, "cuda_max_allocated"
            if self.training.cpu_rss_bytes is not None:
                return self.training.cpu_rss_bytes, "cpu_rss_hwm"
        if self.cuda_max_allocated_bytes is not None:
            return self.cuda_max_allocated_bytes, "cuda_max_allocated_process"
        return self.cpu_peak_rss_bytes, "cpu_peak_rss"

    def setup_peak(self) -> int | None:
        """The setup phase's peak, in the same metric as ``peak`` when it has one; else None."""
        if self.setup is None or self.training is None:
            return None
        if self.training.cuda_max_allocated_bytes is not None:
            return self.setup.cuda_max_allocated_bytes
        return self.setup.cpu_rss_bytes if self.training.cpu_rss_bytes is not None else None


class ModelState(_Strict):
    """Parameters, gradients and optimizer state this rank holds (measured by hpml_core.measure_model_state, expected by hpml_core.contract.model_state)."""

    param_elements_local: int = Field(description="parameter elements this rank stores (its TP shard, its ZeRO partition)")
    full_params_resident: int = Field(description="parameters held whole outside forward/backward (0 under ZeRO-3)")
    params_bytes: int
    grads_bytes: int
    optimizer_bytes: int = Field(description="optimizer moments, and fp32 master weights where they are separate")
    total_bytes: int
    expected_bytes: int
    expectation: str = Field(description="how expected_bytes was computed")


class PredictionLine(_Strict):
    name: str
    bytes: int
    formula: str = Field(description="how it was computed, with the numbers")
    in_allocated: bool = Field(description="counted by torch.cuda.max_memory_allocated (the CUDA context is not)")


class MemoryPrediction(_Strict):
    """The memory model's prediction for this rank (hpml_core.contract.memory_model.predict with the run's
    resolved config, model and layout, for this rank's device), recorded so the report can set it
    against what was measured."""

    device_type: str = Field(description="the device it predicts for: cuda adds the CUDA context, cuBLAS "
                             "workspace and allocator rounding; cpu leaves them out")
    total_bytes: int = Field(description="every line, the CUDA context included")
    allocated_bytes: int = Field(description="the lines inside PyTorch's allocator: what the training phase's "
                                 "cuda_max_allocated_bytes should show")
    model_state_bytes: int = Field(description="parameters + gradients + optimizer states: what "
                                   "model_state.total_bytes measures (ZeRO-3's persistent whole copies are a "
                                   "line of their own, outside it, as outside the measurement)")
    lines: list[PredictionLine]


class Loss(_Strict):
    start_step: int = Field(description="index of the first step this process ran (non-zero after --resume)")
    values: list[float] = Field(description="one per step run by this process")
    averaged_over_dp: bool = Field(description="true: the mean over data-parallel ranks; false (a failed run): this rank's own")


class SkippedCheckpoint(_Strict):
    tag: str = Field(description="its step folder under the checkpoint folder")
    step: int
    reason: str = Field(description="why it could not be used: a file missing, cut short, not matching its checksum")


class RankFile(_Strict):
    schema_version: Literal[1, 2] = SCHEMA_VERSION
    run_id: str
    attempt: int = Field(1, ge=1, description="which attempt of the run wrote it: <run>/attempts/<attempt>/ "
                                              "(hpml_core.contract.attempts)")
    status: Outcome = Field(
        description="STOPPED: a signal (time limit near, preemption) stopped it after a checkpoint; resume with "
                    "--resume (schema 1's lower-case words, and oom, are read as these)")
    error: str | None = Field(description="what went wrong, or what stopped it, when status is not COMPLETED")
    config: TrainConfig
    config_source: ConfigSource | None = Field(None, description="the run spec file and the flags that overrode it")
    mode: Mode
    world_size: int
    dp_size: int
    tp_size: int
    rank: int
    local_rank: int
    dp_rank: int
    tp_rank: int
    launcher: str
    hostname: str
    device_type: str
    device_name: str
    versions: Versions
    slurm: Slurm | None
    model: ModelInfo
    batch_size: int = Field(description="samples per data-parallel rank per step")
    global_batch: int
    total_steps: int
    steps_completed: int
    resumed_from_step: int | None
    checkpoints_skipped: list[SkippedCheckpoint] = Field(
        default_factory=list, description="newer checkpoints this attempt's --resume found damaged and passed by, "
                                          "newest first (hpml_core.checkpoint)")
    steps_retrained: int = Field(0, ge=0, description="steps those damaged checkpoints held that this attempt "
                                                      "trained again")
    started_at: str
    finished_at: str
    wall_time_s: float
    throughput: Throughput | None = Field(description="null unless this attempt completed timed steps")
    throughput_missing_reason: str | None = Field(None, description="why throughput is null when the attempt "
                                                  "completed (e.g. every step it had left was warm-up)")
    flops: Flops | None
    precision: PrecisionRegime | None = Field(None, description="how this rank held and computed in the run's "
                                              "precision (hpml_core.contract.precision); null in files written before")
    memory: Memory
    model_state: ModelState | None = Field(description="null unless the run completed")
    prediction: MemoryPrediction | None = Field(None, description="the memory model's prediction for this rank; "
                                                "null in files written before hpml recorded it")
    loss: Loss
    profile: StepProfile | None = Field(None, description="where the time of a few steps after the timed ones went "
                                        "(hpml_core.contract.step_parts); null when not profiled")
    profile_missing_reason: str | None = Field(None, description="why there is no profile")
    energy: Energy | None = Field(None, description="the GPU's energy over the timed steps and the run's joules per "
                                  "token (hpml_core.contract.energy); null when not measured")
    energy_missing_reason: str | None = Field(None, description="why there is no energy figure")


def write(run_dir: Path, record: RankFile) -> Path:
    """Into the record's attempt folder: <run>/attempts/<attempt>/rank-<rank>.json."""
    path = rank_file_path(run_dir, record.attempt, record.rank)
    atomic_write_json(path, record.model_dump(mode="json"))
    return path


def read(path: Path) -> RankFile:
    return RankFile.model_validate_json(path.read_text())


def json_schema() -> dict:
    return RankFile.model_json_schema()


if __name__ == "__main__":
    text = json.dumps(json_schema(), indent=2) + "\n"
    atomic_write(SCHEMA_PATH, lambda f: f.write(text.encode()))
    print(f"wrote {SCHEMA_PATH}", file=sys.stderr)
