"""`gbcosface job render|submit|wait|logs|delete|local`, for PyTorchJobs and TrainJobs (`--kind`).

Why one verb group: the same JobSpec options render a manifest for `kubectl apply`, submit it
through the SDK, or (with `local`) run the same command under the emulator, so a person can move
between the three without translating flags; `--kind` picks the operator (launch/kinds.py).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _kv(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key, value


KINDS = ("pytorchjob", "trainjob")


def _add_kind_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", choices=KINDS, default="pytorchjob",
                   help="PyTorchJob (Training Operator v1) or TrainJob (Kubeflow Trainer v2)")


def _add_spec_args(p: argparse.ArgumentParser) -> None:
    _add_kind_arg(p)
    p.add_argument("--config", required=True, help="training config YAML (or a recipe name: paper, demo)")
    p.add_argument("overrides", nargs="*", help="config overrides key=value, resolved into the ConfigMap")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--name", help="job name (DNS-1035; <= 46 characters fits any node count up to 999)")
    who.add_argument("--run-id", help="derive a run-scoped job name from a pipeline run id")
    p.add_argument("--namespace", default="", help="default: the pod's namespace, the kubeconfig context's, or default")
    p.add_argument("--image", required=True, help="trainer image (pin it by digest)")
    p.add_argument("--image-pull-policy", default="IfNotPresent")
    p.add_argument("--nnodes", type=int, default=1, help="pods: 1 Master + nnodes-1 Workers")
    p.add_argument("--nproc-per-node", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=0)
    p.add_argument("--cpu-request")
    p.add_argument("--cpu-limit")
    p.add_argument("--memory-request")
    p.add_argument("--memory-limit")
    p.add_argument("--shm-size", default="16Gi", help="size of the /dev/shm memory volume ('' for none)")
    p.add_argument("--node-selector", type=_kv, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--gpu-toleration", action="store_true", help="tolerate the nvidia.com/gpu NoSchedule taint")
    p.add_argument("--nccl-env", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="NCCL settings (default NCCL_DEBUG=WARN)")
    p.add_argument("--nccl-socket-ifname", help="network interface for NCCL/gloo bootstrap, e.g. eth0")
    p.add_argument("--env", type=_kv, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--s3-secret", help="Secret with GBCOSFACE_S3_ACCESS_KEY_ID, GBCOSFACE_S3_SECRET_ACCESS_KEY, "
                   "GBCOSFACE_S3_ENDPOINT_URL")
    p.add_argument("--service-account")
    p.add_argument("--data-pvc", help="PersistentVolumeClaim with the training data (mounted read-only)")
    p.add_argument("--data-mount-path", default="/data")
    p.add_argument("--metrics-port", type=int, help="base metrics port (default: the config's run.metrics_port)")
    p.add_argument("--clean-pod-policy", default="Running", choices=["None", "Running", "All"])
    p.add_argument("--ttl", type=int, default=86400, help="ttlSecondsAfterFinished")
    p.add_argument("--backoff-limit", type=int, default=3,
                   help="whole-job restarts (a PyTorchJob renders backoffLimit = (this + 1) x pods)")
    p.add_argument("--active-deadline", type=int, help="activeDeadlineSeconds")
    p.add_argument("--elastic-min", type=int, help="elastic: minimum nodes (Worker-only job)")
    p.add_argument("--elastic-max", type=int, help="elastic: maximum nodes")
    p.add_argument("--elastic-max-restarts", type=int)
    p.add_argument("--queue", help="Kueue LocalQueue (label kueue.x-k8s.io/queue-name); the Volcano queue "
                                   "with --gang-scheduler volcano")
    p.add_argument("--gang-scheduler", choices=["volcano", "scheduler-plugins"],
                   help="PyTorchJob: the operator's --gang-scheduler-name; renders runPolicy.schedulingPolicy")
    p.add_argument("--min-available", type=int, help="gang size with --gang-scheduler (default: all pods)")
    p.add_argument("--priority-class")
    p.add_argument("--label", type=_kv, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--extra-arg", action="append", default=[], help="appended to `gbcosface train`")
    p.add_argument("--image-pull-secret", action="append", default=[], help="imagePullSecrets of the job's pods")
    p.add_argument("--trainjob-runtime", help="TrainJob: [ClusterTrainingRuntime|TrainingRuntime/]NAME "
                                              "(default ClusterTrainingRuntime/gbcosface-torch)")
    p.add_argument("--termination-grace", type=int, default=300, help="terminationGracePeriodSeconds of the pods")
    p.add_argument("--cluster-profile", type=Path,
                   help="a cluster profile YAML (docs/kubernetes.md); its keys and defaults replace the flags above")
    p.add_argument("--crd", type=Path, help="validate against this CRD file (of the chosen kind) before output")


def _rendered(args: argparse.Namespace) -> Any:
    from gbcosface.config import load_config

    from .kinds import get_job_kind
    from .names import job_name_for_run
    from .namespace import default_namespace
    from .profile import apply_profile, parse_cluster_profile
    from .spec import JobSpec
    from .validate import JobValidationError, load_crd_schema

    cfg = load_config(args.config, args.overrides)
    nccl = {"NCCL_DEBUG": "WARN", **dict(args.nccl_env)}
    tolerations = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}] if args.gpu_toleration else []
    spec = JobSpec(
        name=args.name or job_name_for_run(args.run_id),
        run_id=args.run_id,
        image=args.image,
        namespace=default_namespace(args.namespace, kubeconfig=getattr(args, "kubeconfig", None)),
        nnodes=args.nnodes,
        nproc_per_node=args.nproc_per_node,
        image_pull_policy=args.image_pull_policy,
        gpus_per_node=args.gpus_per_node,
        cpu_request=args.cpu_request,
        cpu_limit=args.cpu_limit,
        memory_request=args.memory_request,
        memory_limit=args.memory_limit,
        shm_size=args.shm_size or None,
        node_selector=dict(args.node_selector),
        tolerations=tolerations,
        nccl_env=nccl,
        nccl_socket_ifname=args.nccl_socket_ifname,
        env=dict(args.env),
        s3_secret_name=args.s3_secret,
        service_account=args.service_account,
        data_volume_claim=args.data_pvc,
        data_mount_path=args.data_mount_path,
        metrics_port=args.metrics_port,
        clean_pod_policy=args.clean_pod_policy,
        ttl_seconds_after_finished=args.ttl,
        backoff_limit=args.backoff_limit,
        active_deadline_seconds=args.active_deadline,
        elastic_min_nodes=args.elastic_min,
        elastic_max_nodes=args.elastic_max,
        elastic_max_restarts=args.elastic_max_restarts,
        queue=args.queue,
        gang_scheduler=args.gang_scheduler,
        min_available=args.min_available,
        priority_class=args.priority_class,
        labels=dict(args.label),
        extra_args=list(args.extra_arg),
        image_pull_secrets=list(args.image_pull_secret),
        trainjob_runtime=args.trainjob_runtime,
        termination_grace_period_seconds=args.termination_grace,
    )
    if args.cluster_profile:
        spec = apply_profile(spec, parse_cluster_profile(args.cluster_profile.read_text()))
    kind = get_job_kind(args.kind)
    rendered = kind.render(spec, cfg)
    schema = load_crd_schema(args.crd, kind.crd_version()) if args.crd else None
    errors = kind.problems(rendered.job, schema)
    if errors:
        raise JobValidationError(errors, kind.kind)
    return rendered


def _render(args: argparse.Namespace) -> int:
    try:
        text = _rendered(args).to_yaml()
    except ValueError as exc:  # ConfigError, a bad JobSpec, JobValidationError: one line, no traceback
        return _refused("render", exc, args)
    if args.output in (None, "-"):
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
        log.info("wrote %s", args.output)
    return 0


def _refused(verb: str, exc: ValueError, args: argparse.Namespace) -> int:
    """One line naming the problem (the config file, the key, the field); the exit code of its class."""
    from gbcosface.errors import EXIT_CONFIG, exit_code_for, one_line

    if getattr(args, "verbose", False):
        log.debug("job %s refused", verb, exc_info=exc)
    print(f"gbcosface job {verb}: {one_line(exc)}", file=sys.stderr)
    return exit_code_for(exc) or EXIT_CONFIG


def _client(args: argparse.Namespace) -> Any:
    from .client import JobClient
    from .namespace import default_namespace

    return JobClient(namespace=default_namespace(args.namespace or "", kubeconfig=args.kubeconfig),
                     config_file=args.kubeconfig, context=args.context, kind=args.kind)


def _report(fn: Any) -> int:
    from .client import JobError

    try:
        status = fn()
    except JobError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    if status is not None:
        print(status.describe())
    return 0


def _submit(args: argparse.Namespace) -> int:
    try:
        rendered = _rendered(args)
    except ValueError as exc:
        return _refused("submit", exc, args)
    client = _client(args)
    if args.wait:
        return _report(lambda: client.run(rendered, args.timeout, poll_interval=args.poll, stream_logs=args.follow))
    client.submit(rendered)
    print(rendered.job["metadata"]["name"])
    return 0


def _wait(args: argparse.Namespace) -> int:
    return _report(lambda: _client(args).wait(args.name, args.timeout, poll_interval=args.poll))


def _logs(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.follow:
        client.follow_logs(args.name)
    else:
        sys.stdout.write(client.logs(args.name, tail_lines=args.tail))
    return 0


def _delete(args: argparse.Namespace) -> int:
    existed = _client(args).delete(args.name)
    print(f"deleted {args.name}" if existed else f"{args.name} did not exist")
    return 0


def _local_from_manifest(args: argparse.Namespace) -> Any:
    """Plan the emulation of a rendered manifest (`gbcosface job render` output): its kind decides."""
    from gbcosface.yaml_safe import read_yaml_file

    from .kinds import get_job_kind
    from .local import run_plan

    docs = [d for d in read_yaml_file(args.job, all_documents=True) if d]
    configmaps = [d for d in docs if d.get("kind") == "ConfigMap"]
    jobs = [d for d in docs if d.get("kind") in ("PyTorchJob", "TrainJob")]
    if len(jobs) != 1 or len(configmaps) != 1:
        raise ValueError(f"{args.job}: expected one ConfigMap and one PyTorchJob or TrainJob, found "
                         f"{[d.get('kind') for d in docs]}")
    kind = get_job_kind(jobs[0]["kind"])
    work = Path(args.log_dir or Path(args.job).with_suffix("")).resolve()
    plan = kind.plan(jobs[0], configmaps[0], work)
    if args.max_restarts_set:
        plan.max_restarts, plan.backoff_limit = args.max_restarts, None
    plan.env.update(dict(args.env))
    if args.timeout:
        plan.timeout_s = args.timeout
    return run_plan(plan, log_dir=work / "logs")


def _local(args: argparse.Namespace) -> int:
    from .contract import split_command
    from .local import run_local_job

    args.max_restarts_set = args.max_restarts is not None
    args.max_restarts = args.max_restarts or 0
    if args.job:
        try:
            result = _local_from_manifest(args)
        except (ValueError, KeyError) as exc:
            print(f"gbcosface job local: {exc}", file=sys.stderr)
            return 2
        return _print_local(result)
    if args.command_line is None and args.config is None:
        print("gbcosface job local: --job, --config or --command is required", file=sys.stderr)
        return 2
    result = run_local_job(
        replicas=args.replicas,
        nproc_per_node=args.nproc_per_node,
        config=args.config,
        overrides=args.overrides,
        command=split_command(args.command_line) if args.command_line else None,
        log_dir=args.log_dir,
        max_restarts=args.max_restarts,
        job_name=args.job_name,
        extra_env=dict(args.env),
        timeout_s=args.timeout,
        kind=args.kind,
    )
    return _print_local(result)


def _print_local(result: Any) -> int:
    for i, attempt in enumerate(result.attempts):
        print(f"attempt {i}: {attempt.reason}; exit codes {dict(zip(result.replica_names, attempt.exit_codes, strict=True))}")
    print(f"{result.job_name}: {'Succeeded' if result.succeeded else 'Failed'} (logs in {result.log_dir})")
    return 0 if result.succeeded else 1


def _add_cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kubeconfig", help="kubeconfig file (default: ~/.kube/config or in-cluster)")
    if not any(a.dest == "kind" for a in p._actions):
        _add_kind_arg(p)
    p.add_argument("--context")


def register(subparsers: Any) -> None:
    job = subparsers.add_parser("job", help="render, submit, watch and clean up PyTorchJobs/TrainJobs; run one locally")
    verbs = job.add_subparsers(dest="job_verb", metavar="VERB", required=True)

    r = verbs.add_parser("render", help="write the ConfigMap + job (PyTorchJob or TrainJob) as multi-document YAML")
    _add_spec_args(r)
    r.add_argument("-o", "--output", help="output file (default stdout)")
    r.set_defaults(func=_render)

    s = verbs.add_parser("submit", help="create the ConfigMap + job in a cluster")
    _add_spec_args(s)
    _add_cluster_args(s)
    s.add_argument("--wait", action="store_true", help="wait for the job to finish (deleted on timeout or Ctrl-C)")
    s.add_argument("--follow", action="store_true", help="with --wait: stream the master's log")
    s.add_argument("--timeout", type=float, default=7 * 24 * 3600.0)
    s.add_argument("--poll", type=float, default=10.0)
    s.set_defaults(func=_submit)

    for verb, helptext in (("wait", "wait for a job to finish"), ("logs", "print the master's log"),
                           ("delete", "delete a job and its ConfigMap")):
        v = verbs.add_parser(verb, help=helptext)
        v.add_argument("name")
        v.add_argument("--namespace", default="", help="default: the pod's or the kubeconfig context's")
        _add_cluster_args(v)
        if verb == "wait":
            v.add_argument("--timeout", type=float, required=True)
            v.add_argument("--poll", type=float, default=10.0)
        if verb == "logs":
            v.add_argument("-f", "--follow", action="store_true")
            v.add_argument("--tail", type=int)
        v.set_defaults(func={"wait": _wait, "logs": _logs, "delete": _delete}[verb])

    lo = verbs.add_parser("local", help="emulate the job on this machine: one process per replica (node)")
    _add_kind_arg(lo)
    lo.add_argument("--job", help="a rendered manifest (`job render` output): emulate exactly it, of its kind")
    lo.add_argument("--replicas", type=int, default=2, help="pods to emulate (nodes; PyTorchJob: 1 Master + Workers)")
    lo.add_argument("--nproc-per-node", type=int, default=1)
    lo.add_argument("--config", help="training config YAML (or a recipe name: demo, paper)")
    lo.add_argument("--command", dest="command_line",
                    help="run this command in each replica instead of the trainer (a leading torchrun/python "
                         "maps to this interpreter)")
    lo.add_argument("--log-dir", help="per-replica log files (default: a new temporary directory)")
    lo.add_argument("--max-restarts", type=int, default=None,
                    help="restarts of the whole set (default with --job: the manifest's, counted as its "
                         "controller counts: a PyTorchJob's backoffLimit, a TrainJob runtime's maxRestarts; else 0)")
    lo.add_argument("--job-name", default="gbcosface-local")
    lo.add_argument("--env", type=_kv, action="append", default=[], metavar="KEY=VALUE")
    lo.add_argument("--timeout", type=float, help="kill the job after this many seconds (activeDeadlineSeconds)")
    lo.add_argument("overrides", nargs="*", help="after --: config overrides key=value passed to the trainer")
    lo.set_defaults(func=_local)
