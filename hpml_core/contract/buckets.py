"""The communication buckets the engine configures, in one place: the engine hands them to
DeepSpeed (``hpml_core.zero``) and leaves PyTorch DDP's default, and the memory model
(``memory_model``) counts the buffers they allocate, so the two cannot drift apart."""

from hpml_core.contract.units import MIB

# DeepSpeed ZeRO-3, in elements: the gradient reduce bucket (preallocated once with
# contiguous_gradients) and how many parameter elements a prefetch gathers ahead.
ZERO3_REDUCE_BUCKET = 50_000_000
ZERO3_PREFETCH_BUCKET = 50_000_000
# DeepSpeed's default stage3_max_reuse_distance, which hpml leaves as it is.
ZERO3_MAX_REUSE_DISTANCE = 1_000_000_000
# PyTorch DDP's default bucket_cap_mb (hpml does not change it).
DDP_BUCKET_BYTES = 25 * MIB
# DeepSpeed ZeRO-1/2, in elements: the gradient reduce bucket (stage 2 with overlap_comm keeps two
# of them, in the gradients' dtype) and the bucket the updated partitions are all-gathered in.
# DeepSpeed's default is 500M; 50M is ZeRO-3's reduce bucket above, so the stages compare alike.
ZERO12_BUCKET = 50_000_000
