"""The Helm chart, rendered offline with Helm's engine and checked against the Kubernetes 1.33,
KEDA and Prometheus-operator schemas, and for the properties the service depends on."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.cli import cli
from service.config import Settings
from tests.deploy import dockerfile as df
from tests.deploy.chart import CHART, RenderError, profiles, render, validate, validate_all

GPU_KEDA = CHART / "ci" / "gpu-keda-values.yaml"
REPLAY = CHART / "ci" / "replay-values.yaml"
GPU_RESOURCE = "nvidia.com/gpu"
# What the service does after the deadline before it exits: the last cache writes wait up to
# 10 s (service/app.py, Service.__exit__).
AFTER_DEADLINE_S = 10


def _kind(manifests: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [m for m in manifests if m["kind"] == kind]
    assert 1 == len(found), f"{len(found)} {kind} rendered"
    return found[0]


def _pod_specs(manifests: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for manifest in manifests:
        if manifest["kind"] in {"Deployment", "Job"}:
            yield manifest["kind"], manifest["spec"]["template"]["spec"]


def _settings_names() -> set[str]:
    """Every environment variable service/config.py's Settings reads."""
    names = set()
    for name, field in Settings.model_fields.items():
        names.add(f"ENRICH_{name.upper()}")
        alias = field.validation_alias
        names |= {str(choice) for choice in getattr(alias, "choices", [])}
    return names


@pytest.fixture(scope="module")
def default() -> list[dict[str, Any]]:
    """The chart with its default values."""
    return render()


@pytest.fixture(scope="module")
def full() -> list[dict[str, Any]]:
    """The chart with the GPU profile, KEDA, the ServiceMonitor, a Secret and a replay Job."""
    return render([GPU_KEDA, REPLAY])


@pytest.mark.parametrize("profile", sorted(profiles()))
def test_every_profile_passes_the_vendored_schemas(profile: str) -> None:
    """Each values profile under ci/ (and the defaults, and all of them at once) renders
    manifests that the Kubernetes, KEDA and Prometheus-operator schemas accept."""
    manifests = render(profiles()[profile])
    assert manifests
    assert [] == validate_all(manifests)


def test_default_values_render_the_core_objects_only(default: list[dict[str, Any]]) -> None:
    """With its defaults the chart renders a ConfigMap, Deployment, Service and PDB, and no
    CRD objects, Secret or Job (a cluster without KEDA or the Prometheus operator takes it)."""
    assert ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service"] == sorted(
        m["kind"] for m in default
    )


def test_full_profile_renders_every_kind(full: list[dict[str, Any]]) -> None:
    """The GPU/KEDA/replay profile renders all eight kinds the chart has."""
    assert {
        "ConfigMap", "Deployment", "Job", "PodDisruptionBudget", "ScaledObject", "Secret",
        "Service", "ServiceMonitor",
    } == {m["kind"] for m in full}  # fmt: skip


def test_schema_validation_reports_a_broken_manifest(default: list[dict[str, Any]]) -> None:
    """The validation is live: a misspelt probe field and a string port are reported."""
    deployment = json.loads(json.dumps(_kind(default, "Deployment")))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["livenessProbe"]["httpGett"] = container["livenessProbe"].pop("httpGet")
    container["ports"][0]["containerPort"] = "9464"
    problems = validate(deployment)
    assert any("httpGett" in p for p in problems)
    assert any("containerPort" in p for p in problems)


@pytest.mark.parametrize("deadline", [30, 2.5, 120])
def test_grace_period_exceeds_the_shutdown_deadline(deadline: float, tmp_path: Path) -> None:
    """Every pod gets longer to stop than ENRICH_SHUTDOWN_DEADLINE_S plus the service's own
    exit work, and the ConfigMap gives the pods that same deadline."""
    values = tmp_path / "deadline.yaml"  # a file: --set reads 2.5 as a string, as helm does
    values.write_text(yaml.safe_dump({"config": {"shutdownDeadlineSeconds": deadline}}))
    manifests = render([GPU_KEDA, REPLAY, values])
    config = _kind(manifests, "ConfigMap")["data"]
    assert deadline == float(config["ENRICH_SHUTDOWN_DEADLINE_S"])
    specs = list(_pod_specs(manifests))
    assert {"Deployment", "Job"} == {kind for kind, _ in specs}
    for _, spec in specs:
        assert spec["terminationGracePeriodSeconds"] > deadline + AFTER_DEADLINE_S


def test_chart_deadline_default_is_the_services(default: list[dict[str, Any]]) -> None:
    """The chart's default deadline and metrics port are service/config.py's defaults."""
    config = _kind(default, "ConfigMap")["data"]
    fields = Settings.model_fields
    assert fields["shutdown_deadline_s"].default == float(config["ENRICH_SHUTDOWN_DEADLINE_S"])
    assert fields["metrics_port"].default == int(config["ENRICH_METRICS_PORT"])


def test_margin_too_short_for_the_exit_work_is_refused() -> None:
    """The values schema refuses a grace margin that the last cache writes would overrun."""
    with pytest.raises(RenderError, match="shutdownGraceMarginSeconds"):
        render(sets=[f"shutdownGraceMarginSeconds={AFTER_DEADLINE_S}"])


def test_probes_check_healthz_and_readyz_on_the_metrics_port(full: list[dict[str, Any]]) -> None:
    """Startup and liveness probe /healthz, readiness /readyz, on the named port whose number
    is ENRICH_METRICS_PORT; the Service and ServiceMonitor scrape /metrics there."""
    http = (df.REPO_ROOT / "service" / "http.py").read_text()
    served = set(re.findall(r'add_get\("(/[a-z]+)"', http))
    assert {"/healthz", "/readyz", "/metrics"} <= served
    port = int(_kind(full, "ConfigMap")["data"]["ENRICH_METRICS_PORT"])
    container = _kind(full, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert [{"name": "metrics", "containerPort": port, "protocol": "TCP"}] == container["ports"]
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"),
                        ("readinessProbe", "/readyz")):  # fmt: skip
        assert {"path": path, "port": "metrics"} == container[probe]["httpGet"]
    service = _kind(full, "Service")
    assert [("metrics", port, "metrics")] == [
        (p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]
    ]
    endpoint = _kind(full, "ServiceMonitor")["spec"]["endpoints"][0]
    assert ("metrics", "/metrics") == (endpoint["port"], endpoint["path"])


def test_selectors_match_the_pods(full: list[dict[str, Any]]) -> None:
    """The Service, PDB and ServiceMonitor select the Deployment's pods (and the Service's
    labels), and the replay Job's pods are not among them."""
    deployment = _kind(full, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert selector == _kind(full, "Service")["spec"]["selector"]
    assert selector == _kind(full, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    monitor = _kind(full, "ServiceMonitor")["spec"]["selector"]["matchLabels"]
    assert monitor.items() <= _kind(full, "Service")["metadata"]["labels"].items()
    job_labels = _kind(full, "Job")["spec"]["template"]["metadata"]["labels"]
    assert not selector.items() <= job_labels.items()


def test_scaledobject_scales_on_the_groups_lag_up_to_the_partition_count(
    full: list[dict[str, Any]],
) -> None:
    """KEDA's Kafka trigger watches the service's group and input topic, and maxReplicaCount
    is the input topic's partition count; the Deployment leaves its replicas to KEDA."""
    values = yaml.safe_load(GPU_KEDA.read_text())
    scaled = _kind(full, "ScaledObject")["spec"]
    config = _kind(full, "ConfigMap")["data"]
    deployment = _kind(full, "Deployment")
    assert values["inputTopicPartitions"] == scaled["maxReplicaCount"]
    assert scaled["minReplicaCount"] <= scaled["maxReplicaCount"]
    assert deployment["metadata"]["name"] == scaled["scaleTargetRef"]["name"]
    assert "replicas" not in deployment["spec"]
    trigger = scaled["triggers"][0]
    assert "kafka" == trigger["type"]
    assert config["ENRICH_GROUP_ID"] == trigger["metadata"]["consumerGroup"]
    assert config["ENRICH_INPUT_TOPIC"] == trigger["metadata"]["topic"]
    assert config["KAFKA_BOOTSTRAP_SERVERS"] == trigger["metadata"]["bootstrapServers"]
    assert "false" == trigger["metadata"]["allowIdleConsumers"]


@pytest.mark.parametrize(("maximum", "expected"), [(8, 8), (24, 24)])
def test_scaledobject_takes_a_lower_maximum(maximum: int, expected: int) -> None:
    """A keda.maxReplicaCount at or under the partition count is used as it is."""
    manifests = render([GPU_KEDA], [f"keda.maxReplicaCount={maximum}"])
    assert expected == _kind(manifests, "ScaledObject")["spec"]["maxReplicaCount"]


@pytest.mark.parametrize(
    "sets",
    [
        ["keda.maxReplicaCount=25"],
        ["keda.minReplicaCount=30"],
        ["inputTopicPartitions=1"],
    ],
)
def test_more_replicas_than_partitions_is_refused(sets: list[str]) -> None:
    """KEDA may never be let above the input topic's partition count: rendering fails."""
    with pytest.raises(RenderError, match=r"inputTopicPartitions|maxReplicaCount \("):
        render([GPU_KEDA], sets)


def test_fixed_replica_count_above_partitions_is_refused() -> None:
    """Without KEDA, replicaCount above the partition count fails to render as well."""
    with pytest.raises(RenderError, match="replicaCount"):
        render(sets=["inputTopicPartitions=3", "replicaCount=4"])


def test_rollout_never_surges_past_the_replica_count(full: list[dict[str, Any]]) -> None:
    """A rolling update replaces pods one by one without a surge pod, which at the partition
    count would get no partition, never be ready and stall the rollout."""
    rolling = _kind(full, "Deployment")["spec"]["strategy"]["rollingUpdate"]
    assert 0 == rolling["maxSurge"]
    assert rolling["maxUnavailable"] >= 1
    pdb = _kind(full, "PodDisruptionBudget")["spec"]
    assert "AlwaysAllow" == pdb["unhealthyPodEvictionPolicy"]


def test_gpu_limits_only_in_the_gpu_profile(
    default: list[dict[str, Any]], full: list[dict[str, Any]]
) -> None:
    """The GPU profile asks every pod for an nvidia.com/gpu, selects GPU nodes, tolerates
    their taint and runs the -gpu image; the default profile mentions no GPU at all."""
    assert GPU_RESOURCE not in yaml.safe_dump_all(default)
    specs = list(_pod_specs(full))
    assert {"Deployment", "Job"} == {kind for kind, _ in specs}
    for _, spec in specs:
        container = spec["containers"][0]
        assert 1 == container["resources"]["limits"][GPU_RESOURCE]
        assert "true" == spec["nodeSelector"]["nvidia.com/gpu.present"]
        assert any(t["key"] == GPU_RESOURCE for t in spec["tolerations"])
    deployment_image = _kind(full, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert deployment_image["image"].endswith("-gpu")


def test_pods_run_as_the_images_non_root_user(full: list[dict[str, Any]]) -> None:
    """Every pod runs as the Dockerfile's numeric user, non-root, without privilege
    escalation or capabilities, on a read-only root with a writable /tmp, and without an API
    token."""
    uid = int(df.values(df.DOCKERFILES["Dockerfile"], "USER")[-1].split(":")[0])
    for _, spec in _pod_specs(full):
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True
        assert uid == pod["runAsUser"]
        assert spec["automountServiceAccountToken"] is False
        container = spec["containers"][0]
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert ["ALL"] == security["capabilities"]["drop"]
        assert security["readOnlyRootFilesystem"] is True
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]]


def test_model_volume_is_mounted_read_only_at_the_model_dir(full: list[dict[str, Any]]) -> None:
    """With model.volume set, each pod mounts it read-only where ENRICH_MODEL_DIR points."""
    model_dir = _kind(full, "ConfigMap")["data"]["ENRICH_MODEL_DIR"]
    for _, spec in _pod_specs(full):
        mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "model")
        assert (model_dir, True) == (mount["mountPath"], mount["readOnly"])
        assert any(v["name"] == "model" and "persistentVolumeClaim" in v for v in spec["volumes"])


def test_settings_come_from_the_configmap_and_secret(
    full: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pods read the ConfigMap and then the Secret; every name in them is a setting
    service/config.py reads, and Settings accepts their values."""
    spec = _kind(full, "Deployment")["spec"]["template"]["spec"]
    sources = spec["containers"][0]["envFrom"]
    config, secret = _kind(full, "ConfigMap"), _kind(full, "Secret")
    assert [{"configMapRef": {"name": config["metadata"]["name"]}},
            {"secretRef": {"name": secret["metadata"]["name"]}}] == sources  # fmt: skip
    env = {**config["data"], **secret["stringData"]}
    assert set(env) <= _settings_names()
    for name in _settings_names():
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert 30.0 == settings.shutdown_deadline_s
    assert "SASL_SSL" == settings.kafka_config["security.protocol"]
    assert Path(config["data"]["ENRICH_MODEL_DIR"]) == settings.model_dir
    assert 64 == settings.batch_max_size


def test_settings_the_chart_derives_from_cannot_be_set_by_name(
    default: list[dict[str, Any]],
) -> None:
    """No setting the chart writes from its own values (deadline, port, topic, group, model
    directory...) can be set again by name in config.env or secret.env, where it would
    disagree with the grace period, probes or KEDA trigger built from the value; nor can a
    transactional id that every pod would share."""
    owned = set(_kind(default, "ConfigMap")["data"]) | {"ENRICH_TRANSACTIONAL_ID", "REDIS_URL"}
    for name in sorted(owned):
        for where in ("config.env", "secret.env"):
            if (where, name) == ("secret.env", "REDIS_URL"):
                continue  # the one the Secret is for: a Redis URL with a password
            with pytest.raises(RenderError, match=name):
                render(sets=[f"{where}.{name}=1"])


def test_a_changed_setting_rolls_the_pods() -> None:
    """The pod template carries a checksum of the ConfigMap, so a new setting restarts pods."""

    def checksum(*sets: str) -> str:
        deployment = _kind(render(sets=list(sets)), "Deployment")
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum() != checksum("config.env.ENRICH_BATCH_MAX_SIZE=16")


def test_replay_job_runs_enrich_replay(full: list[dict[str, Any]]) -> None:
    """The replay Job runs `enrich replay` once (restartPolicy Never) with the values' since
    and output topic, under a name carrying its run id, and the CLI accepts its arguments."""
    job = _kind(full, "Job")
    values = yaml.safe_load(REPLAY.read_text())["replay"]
    assert values["runId"] in job["metadata"]["name"]
    spec = job["spec"]["template"]["spec"]
    assert "Never" == spec["restartPolicy"]
    container = spec["containers"][0]
    assert "command" not in container  # the image's ENTRYPOINT: enrich
    args = container["args"]
    assert ["replay", "--no-progress", "--since", values["since"],
            "--output-topic", values["outputTopic"]] == args  # fmt: skip
    replay = cli.get_command(cli.make_context("enrich", list(args)), "replay")
    assert replay is not None
    parsed = replay.make_context("replay", list(args[1:])).params
    assert values["outputTopic"] == parsed["output_topic"]
    deployment = _kind(full, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert ["serve"] == deployment["args"]


def test_replay_job_needs_a_run_id() -> None:
    """A replay without replay.runId fails to render: each run needs its own Job name."""
    with pytest.raises(RenderError, match=r"replay\.runId"):
        render(sets=["replay.enabled=true"])


def test_replay_job_can_use_a_new_models_image() -> None:
    """replay.image replaces the Deployment's image in the Job only."""
    manifests = render([REPLAY], ["replay.image.tag=0.2.0"])
    job = _kind(manifests, "Job")["spec"]["template"]["spec"]["containers"][0]
    deployment = _kind(manifests, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert job["image"].endswith(":0.2.0")
    assert not deployment["image"].endswith(":0.2.0")


def test_values_typos_are_refused() -> None:
    """The chart's values schema refuses an unknown key and a setting that is not the
    service's."""
    with pytest.raises(RenderError, match="kedaa"):
        render(sets=["kedaa.enabled=true"])
    with pytest.raises(RenderError, match="BATCH_SIZE"):
        render(sets=["config.env.BATCH_SIZE=3"])


def test_chart_refuses_clusters_older_than_its_apis() -> None:
    """The chart's kubeVersion keeps it off clusters without PDB unhealthyPodEvictionPolicy."""
    with pytest.raises(RenderError, match="kubeVersion"):
        render(kube_version="1.26.0")
