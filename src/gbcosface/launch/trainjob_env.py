"""The Kubeflow Trainer v2 (TrainJob) environment contract, for the renderer and the local emulator.

Why written down as code: as for the PyTorchJob (`launch/contract.py`), the emulator must start
each "node" with exactly what a TrainJob pod gets, and the renderer must not set what the
operator owns. Read from the kubeflow/trainer v2.3.0 sources (pkg/constants/constants.go,
pkg/runtime/framework/plugins/torch/torch.go; see tests/fixtures/crds/README.md):

The torch plugin injects into the trainer container (`node` of the replicated job `node`):

| variable            | value                                                          |
| ------------------- | -------------------------------------------------------------- |
| PET_NNODES          | trainer.numNodes                                               |
| PET_NPROC_PER_NODE  | trainer.numProcPerNode                                         |
| PET_NODE_RANK       | the pod's Job completion index (a fieldRef on its annotation) |
| PET_MASTER_ADDR     | `<trainjob>-node-0-0.<trainjob>` (pod 0's DNS name in the JobSet's headless Service) |
| PET_MASTER_PORT     | 29500 (also opened as a container port)                        |

and the Indexed Job adds JOB_COMPLETION_INDEX (= PET_NODE_RANK). Unlike the Training Operator
v1 there is no MASTER_ADDR/RANK/WORLD_SIZE/PYTHONUNBUFFERED: torchrun reads the PET_* variables
and gives each process its RANK, LOCAL_RANK and WORLD_SIZE. The webhook rejects a TrainJob
whose `spec.trainer.env` sets any of the PET_* names above.

Pods are created by JobSet and named `<trainjob>-node-0-<i>-<random>`; their hostname is
`<trainjob>-node-0-<i>`. The emulator names node i's log `<job>-node-0-<i>.log`.
"""

from __future__ import annotations

#: The trainer container and replicated job of the torch runtimes (torch-distributed, ours).
CONTAINER_NAME = "node"
REPLICATED_JOB = "node"
MASTER_PORT = 29500

RESERVED_ENV_NAMES = ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT")
#: What the emulator removes from an inherited environment besides the PET_* prefix.
INJECTED_ENV_NAMES = (*RESERVED_ENV_NAMES, "JOB_COMPLETION_INDEX")

#: Labels JobSet and the Trainer put on every pod of a TrainJob.
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
REPLICATED_JOB_LABEL = "jobset.sigs.k8s.io/replicatedjob-name"
JOB_INDEX_LABEL = "jobset.sigs.k8s.io/job-index"
COMPLETION_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
ANCESTOR_LABEL = "trainer.kubeflow.org/trainjob-ancestor-step"


def replica_names(job_name: str, nnodes: int) -> list[str]:
    """The nodes' hostnames, in node-rank order (the emulator's log names)."""
    return [f"{job_name}-{REPLICATED_JOB}-0-{i}" for i in range(nnodes)]


def master_addr(job_name: str) -> str:
    return f"{job_name}-{REPLICATED_JOB}-0-0.{job_name}"


def injected_env(
    job_name: str,
    node_rank: int,
    nnodes: int,
    nproc_per_node: int,
    master: str | None = None,
    master_port: int = MASTER_PORT,
) -> dict[str, str]:
    """What the torch plugin (and the Indexed Job) put into node `node_rank`'s container."""
    if nnodes < 1 or nproc_per_node < 1:
        raise ValueError(f"nnodes and nproc_per_node must be >= 1, got {nnodes} and {nproc_per_node}")
    if not 0 <= node_rank < nnodes:
        raise ValueError(f"node rank {node_rank} is outside a TrainJob of {nnodes} nodes")
    return {
        "PET_NNODES": str(nnodes),
        "PET_NPROC_PER_NODE": str(nproc_per_node),
        "PET_NODE_RANK": str(node_rank),
        "PET_MASTER_ADDR": master if master is not None else master_addr(job_name),
        "PET_MASTER_PORT": str(master_port),
        "JOB_COMPLETION_INDEX": str(node_rank),
    }
