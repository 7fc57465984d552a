"""The performance model: memory -> smallest GPU count, FLOPs -> hours, a communication
model for data-parallel training, and serving throughput. Pure functions, no I/O.

Training memory per GPU (mixed-precision Adam): bf16 weights and gradients, fp32 master
weights and two fp32 moments, ~16 bytes per parameter, divided by the sharding degree
under FSDP; plus activations for one micro-batch (per layer ~34·s·b·d bytes in 16-bit
with fused attention; with full recompute only each layer's input, 2·s·b·d, is kept and
one layer's working set is live), plus the logits of the loss.

Step time: compute at peak x MFU, plus the part of the gradient synchronisation that
backward does not hide. Synchronisation is hierarchical: reduce-scatter inside the node
over NVLink or PCIe, an all-reduce of each GPU's 1/g slice across nodes over the fabric,
and an all-gather back inside the node. FSDP moves 1.5x the bytes of DDP (parameters are
gathered for forward and backward, gradients reduce-scattered).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from workloads.gpus import GPUS, GpuSpec
from workloads.spec import InferenceJob, ModelShape, RequestClass, TrainingJob

GIB = 1024**3
STATE_BYTES_PER_PARAM = 16  # weights + grads (16-bit) + fp32 master + Adam m and v
USABLE_MEMORY_FRACTION = 0.90  # CUDA context, allocator fragmentation, NCCL buffers
DEFAULT_MFU = 0.40  # datacenter parts with tensor cores, bf16
CONSUMER_MFU = 0.30  # workstation and gaming parts (lower clocks under load, PCIe)
LEGACY_MFU = 0.20  # parts without tensor cores
LEGACY_GPUS = frozenset({"K80", "M60", "P4", "P100"})
CPU_FLOPS_PER_VCPU = 10.0e9  # conservative fp32 rate of one vCPU training a small GPT
CPU_DEFAULT_VCPUS = 2
BACKWARD_SHARE = 2 / 3  # backward is ~2/3 of a training step's FLOPs
OVERLAP = 0.8  # share of backward that can hide communication
BUCKET_BYTES = 25 * 1024**2  # gradient bucket size (PyTorch DDP default)
DEFAULT_FABRIC_GBPS = 10.0  # between nodes when the offer does not say
RDMA_EFFICIENCY = 0.80
TCP_EFFICIENCY = 0.45
INTRA_EFFICIENCY = 0.80
RDMA_LATENCY_S = 10e-6
TCP_LATENCY_S = 60e-6
INTRA_LATENCY_S = 5e-6
CHECKPOINT_GBPS = 2.0  # GB/s each GPU writes its shard of a checkpoint
MAX_GPUS = 16_384


@dataclass(frozen=True)
class Hardware:
    """One node shape times ``nodes``; ``gpu`` None is a CPU-only node."""

    gpu: str | None
    gpus_per_node: int
    nodes: int = 1
    interconnect_gbps: float | None = None
    rdma: bool = False
    vcpus: int | None = None
    memory_gib: float | None = None  # host memory per node (used for CPU-only nodes)

    @property
    def gpus(self) -> int:
        return self.gpus_per_node * self.nodes


@dataclass(frozen=True)
class Calibration:
    """Measured training throughput of one device; CPU-only nodes use ``achieved_flops``
    per node, GPUs use ``mfu`` in place of the default."""

    device: str  # a canonical GPU name, or "cpu:<model>"
    achieved_flops: float
    mfu: float | None

    @property
    def is_cpu(self) -> bool:
        return self.device.startswith("cpu")


@dataclass(frozen=True)
class TrainingEstimate:
    fits: bool
    reason: str | None
    gpus: int
    nodes: int
    hours: float
    step_seconds: float
    mfu: float  # effective: model FLOPs over peak, with communication and recompute
    memory_per_gpu_gib: float
    memory_headroom_gib: float
    flops_total: float
    assumed_mfu: float = 0.0  # the compute efficiency the step time starts from
    compute_seconds: float = 0.0  # per step
    comm_seconds: float = 0.0  # per step, exposed (not hidden by backward)
    recompute: bool = False
    micro_batch: float = 0.0  # sequences per GPU per forward
    checkpoint_seconds: float = 0.0  # to write one checkpoint


@dataclass(frozen=True)
class InferenceEstimate:
    gpu: str
    gpus_per_replica: int
    fits: bool
    reason: str | None
    requests_per_second: float  # one replica, at the SLO
    ttft_ms: float
    tpot_ms: float
    batch: int = 0  # concurrent sequences per replica


# --- model arithmetic -------------------------------------------------------------------


def _model(job: TrainingJob) -> ModelShape:
    """The bundled GPT's shape (the estimates below are not asked for user code)."""
    if job.model is None:
        raise ValueError("user code has no model shape to estimate from")
    return job.model


def flops_per_token(n_params: float, layers: int, d_model: int, seq_len: int) -> float:
    """Training FLOPs per token: 6N for the matmuls plus 12·L·d·s for attention scores."""
    return 6.0 * n_params + 12.0 * layers * d_model * seq_len


def training_flops(job: TrainingJob) -> float:
    """Model FLOPs to train ``job`` (without recompute)."""
    shape = _model(job)
    per_token = flops_per_token(shape.n_params(), shape.layers, shape.d_model, shape.seq_len)
    return per_token * job.total_tokens()


def _bytes_per_value(precision: str) -> int:
    return 4 if precision == "fp32" else 2


def _activation_bytes(job: TrainingJob, micro_batch: float, recompute: bool) -> float:
    shape = _model(job)
    scale = _bytes_per_value(job.precision) / 2
    tokens = micro_batch * shape.seq_len
    per_layer_full = 34.0 * tokens * shape.d_model * scale
    if recompute:
        kept = 2.0 * tokens * shape.d_model * scale * shape.layers + per_layer_full
    else:
        kept = per_layer_full * shape.layers
    logits = tokens * shape.vocab * (2 + 4)  # 16-bit logits and their fp32 softmax
    return kept + logits


def _state_bytes(job: TrainingJob, shards: int) -> float:
    total = float(_model(job).n_params()) * STATE_BYTES_PER_PARAM
    return total / shards if job.parallelism == "fsdp" else total


def memory_per_gpu(
    job: TrainingJob, gpus: int, *, micro_batch: float = 1.0, recompute: bool = True
) -> float:
    """Bytes one GPU holds when ``gpus`` GPUs train ``job``."""
    return _state_bytes(job, gpus) + _activation_bytes(job, micro_batch, recompute)


def _usable_bytes(memory_gib: float) -> float:
    return memory_gib * GIB * USABLE_MEMORY_FRACTION


def _plan_memory(job: TrainingJob, gpus: int, capacity: float) -> tuple[float, bool, float]:
    """(micro-batch, recompute, bytes per GPU): the largest micro-batch up to the per-GPU
    share of the global batch that fits, preferring no recompute; the smallest config if
    nothing fits."""
    share = job.global_batch / gpus
    states = _state_bytes(job, gpus)
    room = capacity - states
    for recompute in (False, True):
        if room <= 0:
            break
        most = room / _activation_bytes(job, 1.0, recompute)  # activations are linear in b
        if share <= most:
            micro = share  # the GPU's whole share in one pass
        elif most >= 1:
            micro = float(math.floor(most))  # gradient accumulation over micro-batches
        else:
            continue
        return micro, recompute, states + _activation_bytes(job, micro, recompute)
    smallest = min(share, 1.0)
    return smallest, True, states + _activation_bytes(job, smallest, True)


def min_gpus(job: TrainingJob, gpu: str) -> int | None:
    """The fewest GPUs of type ``gpu`` whose memory holds ``job`` (None: no count does)."""
    spec = GPUS.get(gpu)
    if spec is None:
        return None
    if job.model is None:  # user code: its memory is unknown, one node's GPUs is the unit
        return job.gpus_per_node or 1
    capacity = _usable_bytes(spec.memory_gib)
    activations = _activation_bytes(job, min(1.0, float(job.global_batch)), True)
    states = float(_model(job).n_params()) * STATE_BYTES_PER_PARAM
    room = capacity - activations
    if room <= 0:
        return None
    if job.parallelism == "ddp":
        return 1 if states <= room else None
    needed = max(1, math.ceil(states / room))
    return needed if needed <= MAX_GPUS else None


def must_span_nodes(job: TrainingJob, gpu: str, gpus_per_node: int) -> bool | None:
    """Whether ``job`` needs more GPUs of ``gpu`` than one node of ``gpus_per_node`` has."""
    needed = min_gpus(job, gpu)
    return None if needed is None else needed > gpus_per_node


# --- time -------------------------------------------------------------------------------


def assumed_mfu(spec: GpuSpec, calibration: Calibration | None = None) -> float:
    """The compute efficiency to assume on ``spec``: measured if calibrated, else by class."""
    if calibration is not None and calibration.device == spec.name and calibration.mfu:
        return calibration.mfu
    if spec.name in LEGACY_GPUS:
        return LEGACY_MFU
    return DEFAULT_MFU if spec.datacenter else CONSUMER_MFU


def _peak(spec: GpuSpec, precision: str) -> float:
    # fp32 matmuls run as TF32 (half the 16-bit tensor rate) where tensor cores exist.
    return spec.peak_flops / 2 if precision == "fp32" else spec.peak_flops


def sync_seconds(
    grad_bytes: float,
    gpus_per_node: int,
    nodes: int,
    *,
    intra_gbps: float,
    fabric_gbps: float | None,
    rdma: bool,
    fsdp: bool,
) -> float:
    """Seconds to synchronise ``grad_bytes`` of gradients once, hierarchically.

    ``intra_gbps`` is GB/s per GPU inside a node; ``fabric_gbps`` is the node's network in
    Gbit/s. Ring collectives move (k-1)/k of the data per participant.
    """
    g, n = max(1, gpus_per_node), max(1, nodes)
    volume = 1.5 if fsdp else 1.0
    buckets = max(1, math.ceil(grad_bytes / BUCKET_BYTES))
    seconds = 0.0
    if g > 1:
        bandwidth = intra_gbps * 1e9 * INTRA_EFFICIENCY
        # reduce-scatter then all-gather inside the node
        seconds += volume * 2 * (g - 1) / g * grad_bytes / bandwidth
        seconds += buckets * 2 * (g - 1) * INTRA_LATENCY_S
    if n > 1:
        gbps = fabric_gbps if fabric_gbps and fabric_gbps > 0 else DEFAULT_FABRIC_GBPS
        efficiency = RDMA_EFFICIENCY if rdma else TCP_EFFICIENCY
        node_bandwidth = gbps / 8 * 1e9 * efficiency
        # each GPU all-reduces its 1/g slice across nodes; the node's NIC carries all g
        seconds += volume * 2 * (n - 1) / n * grad_bytes / node_bandwidth
        seconds += buckets * 2 * (n - 1) * (RDMA_LATENCY_S if rdma else TCP_LATENCY_S)
    return seconds


def _constraint_problem(job: TrainingJob, hw: Hardware, spec: GpuSpec | None) -> str | None:
    c = job.constraints
    if hw.gpu is not None and c.gpus and hw.gpu not in c.gpus:
        return f"{hw.gpu} is not in constraints.gpus"
    if spec is not None and c.min_gpu_memory_gib and spec.memory_gib < c.min_gpu_memory_gib:
        return f"{spec.name} has {spec.memory_gib:g} GiB, below constraints.min_gpu_memory_gib"
    if job.nodes is not None and hw.nodes != job.nodes:
        return f"the job asks for exactly {job.nodes} node(s)"
    if c.max_nodes is not None and hw.nodes > c.max_nodes:
        return f"{hw.nodes} nodes exceed constraints.max_nodes ({c.max_nodes})"
    if (
        job.gpus_per_node is not None
        and hw.gpu is not None
        and hw.gpus_per_node != job.gpus_per_node
    ):
        return (
            f"the job asks for {job.gpus_per_node} GPUs per node, the node has {hw.gpus_per_node}"
        )
    if hw.nodes > 1 and c.min_interconnect_gbps:
        fabric = hw.interconnect_gbps or 0.0
        if fabric < c.min_interconnect_gbps:
            return f"{fabric:g} Gbps between nodes, below constraints.min_interconnect_gbps"
    return None


def estimate_training(
    job: TrainingJob, hw: Hardware, *, calibration: Calibration | None = None
) -> TrainingEstimate:
    """Time, memory and feasibility of ``job`` on ``hw``; ``fits`` False says why."""
    if job.is_estimated_by_user:
        return _estimate_given(job, hw)
    if hw.gpu is None:
        return _estimate_cpu(job, hw, calibration)
    spec = GPUS.get(hw.gpu)
    flops_model = training_flops(job)
    if spec is None or hw.gpus_per_node < 1 or hw.nodes < 1:
        why = "unknown GPU" if spec is None else "no GPUs on the node"
        return TrainingEstimate(False, why, hw.gpus, hw.nodes, 0.0, 0.0, 0.0, 0.0, 0.0, flops_model)
    gpus = hw.gpus
    capacity = _usable_bytes(spec.memory_gib)
    micro, recompute, used = _plan_memory(job, gpus, capacity)
    problem = _constraint_problem(job, hw, spec)
    if problem is None and used > capacity:
        problem = (
            f"needs {used / GIB:.1f} GiB per GPU on {gpus} GPU(s) "
            f"({job.parallelism}); {spec.name} has {spec.memory_gib:g} GiB"
        )
    if problem is None and job.precision == "bf16" and not spec.bf16:
        problem = f"{spec.name} has no bf16; use precision fp16"
    if problem is None and job.parallelism == "ddp" and job.global_batch < gpus:
        problem = f"global_batch {job.global_batch} is smaller than {gpus} GPUs"

    mfu = assumed_mfu(spec, calibration)
    peak = _peak(spec, job.precision)
    tokens_step = job.tokens_per_step
    model_flops_step = flops_model / job.total_tokens() * tokens_step
    executed = model_flops_step * (8 / 6 if recompute else 1.0)
    compute = executed / (gpus * peak * mfu)
    grad_bytes = _model(job).n_params() * _bytes_per_value(job.precision)
    intra = spec.nvlink_gbps if spec.nvlink_gbps > 0 else spec.pcie_gbps
    comm = sync_seconds(
        grad_bytes,
        hw.gpus_per_node,
        hw.nodes,
        intra_gbps=intra,
        fabric_gbps=hw.interconnect_gbps,
        rdma=hw.rdma,
        fsdp=job.parallelism == "fsdp",
    )
    hidden = OVERLAP * BACKWARD_SHARE * compute
    exposed = max(0.0, comm - hidden)
    step = compute + exposed
    checkpoint = _checkpoint_seconds(job, gpus)
    total_steps = job.total_steps()
    checkpoints = total_steps // job.checkpoint_every
    hours = (total_steps * step + checkpoints * checkpoint) / 3600
    effective = model_flops_step / (step * gpus * peak) if step > 0 else 0.0
    return TrainingEstimate(
        fits=problem is None,
        reason=problem,
        gpus=gpus,
        nodes=hw.nodes,
        hours=hours,
        step_seconds=step,
        mfu=effective,
        memory_per_gpu_gib=used / GIB,
        memory_headroom_gib=(spec.memory_gib * GIB - used) / GIB,
        flops_total=flops_model * (8 / 6 if recompute else 1.0),
        assumed_mfu=mfu,
        compute_seconds=compute,
        comm_seconds=exposed,
        recompute=recompute,
        micro_batch=micro,
        checkpoint_seconds=checkpoint,
    )


def _estimate_given(job: TrainingJob, hw: Hardware) -> TrainingEstimate:
    """User code: the hours the spec gives (or the default), nothing derived from a model."""
    problem = _constraint_problem(job, hw, GPUS.get(hw.gpu) if hw.gpu else None)
    if problem is None and hw.gpu is None and job.constraints.gpus:
        problem = "a CPU-only node, but constraints.gpus asks for GPUs"
    hours = job.given_hours(hw.gpu, max(1, hw.nodes))
    steps = job.steps or 1
    return TrainingEstimate(
        fits=problem is None,
        reason=problem,
        gpus=hw.gpus if hw.gpu else 0,
        nodes=max(1, hw.nodes),
        hours=hours,
        step_seconds=hours * 3600 / steps,
        mfu=0.0,
        memory_per_gpu_gib=0.0,
        memory_headroom_gib=0.0,
        flops_total=0.0,
    )


def _checkpoint_seconds(job: TrainingJob, gpus: int) -> float:
    """Writing weights and optimizer state; each GPU writes its shard in parallel."""
    total = float(_model(job).n_params()) * (STATE_BYTES_PER_PARAM - 2)  # no gradients
    per_writer = total / gpus if job.parallelism == "fsdp" else total
    return per_writer / (CHECKPOINT_GBPS * 1e9)


def cpu_flops(hw: Hardware, calibration: Calibration | None) -> float:
    """FLOP/s one CPU-only node sustains training a small GPT."""
    if calibration is not None and calibration.is_cpu:
        return calibration.achieved_flops
    return CPU_FLOPS_PER_VCPU * (hw.vcpus or CPU_DEFAULT_VCPUS)


def _estimate_cpu(
    job: TrainingJob, hw: Hardware, calibration: Calibration | None
) -> TrainingEstimate:
    nodes = max(1, hw.nodes)
    flops_model = training_flops(job)
    problem = _constraint_problem(job, hw, None)
    if problem is None and job.constraints.gpus:
        problem = "a CPU-only node, but constraints.gpus asks for GPUs"
    if problem is None and job.constraints.min_gpu_memory_gib:
        problem = "a CPU-only node, but constraints.min_gpu_memory_gib asks for GPUs"
    if problem is None and job.precision != "fp32":
        problem = f"{job.precision} training needs a GPU; use precision fp32 on CPUs"
    per_node_batch = job.global_batch / nodes
    states = float(_model(job).n_params()) * STATE_BYTES_PER_PARAM
    used = states + _activation_bytes(job, per_node_batch, False)
    if problem is None and hw.memory_gib is not None and used > hw.memory_gib * GIB * 0.8:
        problem = f"needs {used / GIB:.1f} GiB per node; the node has {hw.memory_gib:g} GiB"
    rate = cpu_flops(hw, calibration)
    model_flops_step = flops_model / job.total_tokens() * job.tokens_per_step
    compute = model_flops_step / (nodes * rate)
    comm = sync_seconds(
        _model(job).n_params() * 4.0,
        1,
        nodes,
        intra_gbps=1.0,
        fabric_gbps=hw.interconnect_gbps,
        rdma=False,
        fsdp=job.parallelism == "fsdp",
    )
    exposed = max(0.0, comm - OVERLAP * BACKWARD_SHARE * compute)
    step = compute + exposed
    checkpoint = _checkpoint_seconds(job, nodes)
    total_steps = job.total_steps()
    hours = (total_steps * step + total_steps // job.checkpoint_every * checkpoint) / 3600
    headroom = (hw.memory_gib * GIB - used) / GIB if hw.memory_gib is not None else 0.0
    mfu = calibration.mfu if calibration is not None and calibration.mfu else 0.0
    return TrainingEstimate(
        fits=problem is None,
        reason=problem,
        gpus=0,
        nodes=nodes,
        hours=hours,
        step_seconds=step,
        mfu=mfu,
        memory_per_gpu_gib=used / GIB,
        memory_headroom_gib=headroom,
        flops_total=flops_model,
        assumed_mfu=mfu,
        compute_seconds=compute,
        comm_seconds=exposed,
        recompute=False,
        micro_batch=per_node_batch,
        checkpoint_seconds=checkpoint,
    )


# --- spot -------------------------------------------------------------------------------


def optimal_checkpoint_interval(preemptions_per_hour: float, checkpoint_hours: float) -> float:
    """Young's interval τ* = √(2C/λ) in hours (inf when nothing is preempted)."""
    if preemptions_per_hour <= 0:
        return math.inf
    return math.sqrt(2 * max(checkpoint_hours, 0.0) / preemptions_per_hour)


def spot_overhead(
    preemptions_per_hour: float,
    checkpoint_hours: float,
    restart_hours: float,
    interval_hours: float | None = None,
) -> float:
    """Expected extra time as a fraction of useful time: C/τ + λ(R + τ/2).

    Checkpointing every τ costs C each time; each preemption (rate λ) costs a restart R
    and, on average, half an interval of lost work. τ defaults to the optimum √(2C/λ).
    """
    lam = max(preemptions_per_hour, 0.0)
    cost, restart = max(checkpoint_hours, 0.0), max(restart_hours, 0.0)
    if interval_hours is not None and interval_hours <= 0:
        raise ValueError("interval_hours must be > 0")
    tau = interval_hours if interval_hours is not None else optimal_checkpoint_interval(lam, cost)
    if math.isinf(tau):
        return 0.0
    if tau == 0:  # free checkpoints taken continuously: only restarts cost time
        return lam * restart
    return cost / tau + lam * (restart + tau / 2)


# --- inference --------------------------------------------------------------------------
#
# A replica batches continuously with chunked prefill (as vLLM and SGLang do): each step
# decodes one token of every running sequence and takes up to PREFILL_CHUNK_TOKENS prompt
# tokens of waiting requests. A step lasts as long as the slower of reading the weights and
# the batch's KV cache from HBM and doing its FLOPs at SERVING_MFU of peak. In steady state a
# request is admitted when one finishes, so batch x input / output prompt tokens are
# prefilled per step on average, in full chunks: the steps carrying one are compute bound
# for long prompts, the others memory bound. KV memory left after the weights caps the batch.
# A tensor-parallel replica splits weights, KV cache and FLOPs over its GPUs and adds two
# all-reduces of the step's activations per layer over NVLink or PCIe (not overlapped).

SERVING_MFU = 0.50
BANDWIDTH_EFFICIENCY = 0.70
MAX_BATCH = 256
PREFILL_CHUNK_TOKENS = 2048  # prompt tokens one step takes (vLLM's max_num_batched_tokens)
TENSOR_PARALLEL = (1, 2, 4, 8)


def _kv_bytes_per_token(job: InferenceJob) -> float:
    shape = job.shape
    return 2.0 * shape.layers * shape.d_model * _bytes_per_value(job.precision)


def _sizes(job: InferenceJob, request: RequestClass | None) -> tuple[int, int]:
    """(prompt, output) tokens of ``request``, else of the job's mean request."""
    if request is not None:
        return request.input_tokens, request.output_tokens
    return job.input_tokens, job.output_tokens


def replica_widths(job: InferenceJob) -> tuple[int, ...]:
    """The GPUs per replica to consider: the spec's count, else each tensor-parallel degree."""
    return (job.gpus_per_replica,) if job.gpus_per_replica else TENSOR_PARALLEL


@dataclass(frozen=True)
class _Device:
    """One replica's hardware: ``tp`` GPUs of ``spec`` as effective FLOP/s and bytes/s of
    HBM, and the bytes/s of each GPU's link to the others."""

    spec: GpuSpec
    tp: int
    flops: float
    bandwidth: float
    link: float

    @classmethod
    def of(cls, spec: GpuSpec, tp: int, precision: str) -> _Device:
        flops = _peak(spec, precision) * SERVING_MFU * tp
        bandwidth = spec.memory_bandwidth_gbps * 1e9 * BANDWIDTH_EFFICIENCY * tp
        link = spec.nvlink_gbps if spec.nvlink_gbps > 0 else spec.pcie_gbps
        return cls(spec, tp, flops, bandwidth, link * 1e9 * INTRA_EFFICIENCY)

    def all_reduce_seconds(self, size: float) -> float:
        """One ring all-reduce of ``size`` bytes across the replica's GPUs."""
        if self.tp == 1:
            return 0.0
        hops = 2 * (self.tp - 1)
        return hops / self.tp * size / self.link + hops * INTRA_LATENCY_S


def _step_seconds(
    job: InferenceJob, device: _Device, batch: int, context: float, prefill: float, prompt: int
) -> float:
    """One step: a token for each of ``batch`` sequences at mean ``context``, plus
    ``prefill`` tokens of prompts ``prompt`` long (each attends to half its prompt)."""
    shape = job.shape
    n = float(shape.n_params())
    kv = _kv_bytes_per_token(job)
    moved = n * _bytes_per_value(job.precision) + (batch * context + prefill) * kv
    attention = 4.0 * shape.layers * shape.d_model * (batch * context + prefill * prompt / 2)
    work = 2.0 * n * (batch + prefill) + attention
    activations = (batch + prefill) * shape.d_model * _bytes_per_value(job.precision)
    sync = 2 * shape.layers * device.all_reduce_seconds(activations)
    return max(moved / device.bandwidth, work / device.flops) + sync


def estimate_inference(
    job: InferenceJob,
    gpu: str,
    gpus_per_replica: int | None = None,
    request: RequestClass | None = None,
) -> InferenceEstimate:
    """Throughput of one replica of ``job`` on ``gpu`` within the SLO, for ``request``'s
    sizes (the job's mean request when None).

    The spec's ``gpus_per_replica`` fixes the replica's width; otherwise ``gpus_per_replica``
    does, or the tensor-parallel degree (1, 2, 4, 8) with the most requests per second per
    GPU among those that meet the SLO; when none does, the smallest that holds the weights
    explains why.
    """
    spec = GPUS.get(gpu)
    if spec is None:
        return InferenceEstimate(gpu, gpus_per_replica or 0, False, "unknown GPU", 0.0, 0.0, 0.0)
    c = job.constraints
    if c.gpus and gpu not in c.gpus:
        return InferenceEstimate(gpu, 0, False, f"{gpu} is not in constraints.gpus", 0, 0, 0)
    if c.min_gpu_memory_gib and spec.memory_gib < c.min_gpu_memory_gib:
        why = f"{gpu} has {spec.memory_gib:g} GiB, below constraints.min_gpu_memory_gib"
        return InferenceEstimate(gpu, 0, False, why, 0, 0, 0)
    if job.precision == "bf16" and not spec.bf16:
        return InferenceEstimate(gpu, 0, False, f"{gpu} has no bf16; use precision fp16", 0, 0, 0)
    asked = job.gpus_per_replica
    if asked and gpus_per_replica and gpus_per_replica != asked:
        why = f"the spec asks for {asked} GPU(s) per replica, not {gpus_per_replica}"
        return InferenceEstimate(gpu, gpus_per_replica, False, why, 0.0, 0.0, 0.0)
    choices = replica_widths(job) if asked or not gpus_per_replica else (gpus_per_replica,)
    heads = job.shape.heads
    if all(heads % t for t in choices):
        why = f"{choices[0]} GPU(s) per replica do not divide the model's {heads} heads"
        return InferenceEstimate(gpu, choices[0], False, why, 0.0, 0.0, 0.0)
    choices = tuple(t for t in choices if heads % t == 0)
    prompt, output = _sizes(job, request)
    weights = float(job.shape.n_params()) * _bytes_per_value(job.precision)
    per_seq = (prompt + output) * _kv_bytes_per_token(job)
    holding = [t for t in choices if _usable_bytes(spec.memory_gib) * t - weights >= per_seq]
    if not holding:
        need = (weights + per_seq) / GIB
        last = choices[-1]
        why = f"weights and one sequence's KV cache need {need:.0f} GiB; {last}x{gpu} hold less"
        return InferenceEstimate(gpu, last, False, why, 0.0, 0.0, 0.0)
    results = [
        _replica(job, _Device.of(spec, tp, job.precision), prompt, output, weights, per_seq)
        for tp in holding
    ]
    feasible = [r for r in results if r.fits]
    if not feasible:
        return results[0]
    return max(feasible, key=lambda r: r.requests_per_second / r.gpus_per_replica)


def _replica(
    job: InferenceJob, device: _Device, prompt: int, output: int, weights: float, per_seq: float
) -> InferenceEstimate:
    """The largest batch whose steps meet the SLO (step time grows with the batch, and so
    does throughput), capped by KV memory and by the prompts one chunk a step can admit."""
    room = _usable_bytes(device.spec.memory_gib) * device.tp - weights
    chunk = PREFILL_CHUNK_TOKENS
    limit = max(1, min(MAX_BATCH, int(room // per_seq), chunk * output // prompt))
    context = prompt + output / 2

    def timing(batch: int) -> tuple[float, float]:
        """(mean step, time to first token) in seconds with ``batch`` sequences running."""
        prefill = batch * prompt / output  # prompt tokens per step, on average
        carrying = min(1.0, prefill / chunk)  # share of steps that carry a full chunk
        decode = _step_seconds(job, device, batch, context, 0.0, prompt)
        full = _step_seconds(job, device, batch, context, float(chunk), prompt)
        step = carrying * full + (1 - carrying) * decode
        # a new prompt waits for the running step, then is prefilled chunk by chunk
        return step, 0.5 * step + math.ceil(prompt / chunk) * full

    def meets(batch: int) -> bool:
        step, ttft = timing(batch)
        return step * 1000 <= job.slo.tpot_ms and ttft * 1000 <= job.slo.ttft_ms

    if not meets(1):
        step, ttft = timing(1)
        where = f"{device.tp}x{device.spec.name}"
        if ttft * 1000 > job.slo.ttft_ms:
            why = f"time to first token {ttft * 1000:.0f} ms on {where} exceeds the SLO"
        else:
            why = f"time per output token {step * 1000:.1f} ms on {where} exceeds the SLO"
        return InferenceEstimate(
            device.spec.name, device.tp, False, why, 0.0, ttft * 1000, step * 1000, 1
        )
    low, high = 1, limit
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if meets(middle) else (low, middle - 1)
    step, ttft = timing(low)
    # requests finish at batch/output per step, or as fast as prompts are prefilled
    rps = min(low / output, chunk / prompt) / step
    return InferenceEstimate(
        gpu=device.spec.name,
        gpus_per_replica=device.tp,
        fits=True,
        reason=None,
        requests_per_second=rps,
        ttft_ms=ttft * 1000,
        tpot_ms=step * 1000,
        batch=low,
    )


CPU_DECODE_OVERHEAD_S = 2e-3  # per decode step of a small model on CPU (framework time)


def estimate_inference_cpu(
    job: InferenceJob,
    vcpus: int | None,
    calibration: Calibration | None = None,
    request: RequestClass | None = None,
) -> InferenceEstimate:
    """Throughput of one replica of ``job`` on a CPU-only node (one replica per node):
    compute bound at the node's FLOP rate, fp32 weights, batches up to ``max_batch_size``."""
    c = job.constraints
    if c.gpus or c.min_gpu_memory_gib or job.gpus_per_replica:
        why = "a CPU-only node, but the job asks for GPUs"
        return InferenceEstimate("cpu", 0, False, why, 0.0, 0.0, 0.0)
    if job.precision != "fp32":
        why = f"{job.precision} serving needs a GPU; use precision fp32 on CPUs"
        return InferenceEstimate("cpu", 0, False, why, 0.0, 0.0, 0.0)
    rate = cpu_flops(Hardware(gpu=None, gpus_per_node=0, nodes=1, vcpus=vcpus), calibration)
    n = float(job.shape.n_params())
    prompt, output = _sizes(job, request)
    prefill = 2.0 * n * prompt / rate
    best: tuple[float, int, float] | None = None
    for batch in _batch_sizes(job.max_batch_size):
        step = 2.0 * n * batch / rate + CPU_DECODE_OVERHEAD_S
        if step * 1000 > job.slo.tpot_ms or (prefill * 1.5 + step) * 1000 > job.slo.ttft_ms:
            break
        rps = 1.0 / (prefill + output * step / batch)
        if best is None or rps > best[0]:
            best = (rps, batch, step)
    if best is None:
        why = f"a CPU node of {vcpus or CPU_DEFAULT_VCPUS} vCPUs misses the SLO"
        return InferenceEstimate("cpu", 0, False, why, 0.0, prefill * 1000, 0.0)
    rps, batch, step = best
    return InferenceEstimate(
        gpu="cpu",
        gpus_per_replica=0,
        fits=True,
        reason=None,
        requests_per_second=rps,
        ttft_ms=(prefill * 1.5 + step) * 1000,
        tpot_ms=step * 1000,
        batch=batch,
    )


def _batch_sizes(limit: int) -> list[int]:
    sizes = [1]
    while sizes[-1] * 2 <= limit:
        sizes.append(sizes[-1] * 2)
    if sizes[-1] != limit:
        sizes.append(limit)
    return sizes


def replicas_per_node(estimate: InferenceEstimate, gpus_per_node: int) -> int:
    """Replicas of ``estimate``'s shape one node holds (a CPU-only node holds one)."""
    if not estimate.gpus_per_replica:
        return 1
    return gpus_per_node // estimate.gpus_per_replica


def replicas_needed(job: InferenceJob, estimate: InferenceEstimate) -> int | None:
    """Replicas of ``estimate``'s shape to serve ``job.request_rate`` (None: infeasible).

    With user regions, each region's share is served by its own replicas.
    """
    if not estimate.fits or estimate.requests_per_second <= 0:
        return None
    per_replica = estimate.requests_per_second
    shares = job.regions.values() if job.regions else (1.0,)
    total = sum(math.ceil(job.request_rate * share / per_replica - 1e-9) for share in shares)
    return max(job.min_replicas, total)
