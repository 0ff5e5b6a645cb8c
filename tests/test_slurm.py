"""The workflow runs on SLURM through Snakemake's executor plugin and profiles/slurm, to the local result.

A real single-node cluster (munged, slurmctld, slurmd on 127.0.0.1) is started for the test; see
slurm_cluster.py. Needs root and the Debian packages slurmctld slurmd slurm-client munge (.ci/run
installs them).
"""

import os
import re
import subprocess
import sys
import time
from collections import Counter

import pytest
import yaml

from conftest import ROOT, small_config, snakemake_command
import slurm_cluster as cluster_module
from slurm_cluster import slurm_cluster, slurmctld_path

# One job of each kind the profile sends somewhere different (a GPU rule that runs the model, one that fits probes,
# a CPU rule, the local download), not the whole slice again: the local run (e2e_run) covers the rest of the DAG,
# and these are what a cluster changes.
RESULTS = ("results/answers/smollm2-135m.tsv", "results/probes/smollm2-135m/residual/layers00-15.tsv",
           "results/probes/smollm2-135m/residual/layers00-15.predictions.h5",
           "results/baselines/smollm2-135m/text.tsv", "results/interventions/smollm2-135m/zero.tsv")
SUBMITTED = re.compile(r"has been submitted with SLURM jobid (\d+)")


def test_profile_names_plugin_options_that_exist():
    from snakemake_executor_plugin_slurm import ExecutorSettings

    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    assert profile["executor"] == "slurm"
    options = {name.replace("_", "-") for name in ExecutorSettings.__dataclass_fields__}
    for key in (k for k in profile if k.startswith("slurm-")):
        assert key.removeprefix("slurm-") in options, key


@pytest.mark.skipif(os.geteuid() != 0 or cluster_module.CONF_CACHE.exists() or cluster_module.CONF_CACHE.is_symlink(),
                    reason="needs root and no /run/slurm/conf")
def test_a_cluster_whose_test_process_was_killed_is_cleared_and_a_live_one_is_not(tmp_path):
    """A killed test run leaves /run/slurm/conf and its daemons (CI once failed on such a leftover)."""
    link = cluster_module.CONF_CACHE
    ours, other = tmp_path / "ours", tmp_path / "other"
    for directory in (ours, other):
        directory.mkdir()
    (ours / "slurm.conf").write_text("ClusterName=emoprobe-test\nSlurmctldPort=1\n")
    (other / "slurm.conf").write_text("ClusterName=production\n")
    link.parent.mkdir(exist_ok=True)
    daemon = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "-f", str(ours / "slurm.conf")])
    try:
        (ours / cluster_module.OWNER_FILE).write_text(cluster_module._process_identity(os.getpid()))
        link.symlink_to(ours)
        cluster_module._clear_orphaned_cluster()  # its owner (this process) runs: a live cluster
        assert link.is_symlink() and daemon.poll() is None

        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        (ours / cluster_module.OWNER_FILE).write_text(f"{dead.stdout.strip()} 1")
        cluster_module._clear_orphaned_cluster()
        assert not link.is_symlink() and daemon.wait(10) == -9

        link.symlink_to(other)  # someone else's cluster
        cluster_module._clear_orphaned_cluster()
        assert link.is_symlink()
    finally:
        daemon.kill()
        link.unlink(missing_ok=True)


# the rules the profile sends to a GPU node: those that run the model or fit probes
GPU_RULES = ("extract_hidden_states", "intervene", "attend", "fit_probes", "fit_nonlinear_probes",
             "fit_conditional_probes")


def test_profile_names_no_partition_status_command_or_gpu_type_by_default():
    """On a cluster it has not been told about the profile guesses nothing: the default partition, any GPU, the
    plugin's own status command (each an ADAPT line, commented out)."""
    text = (ROOT / "profiles/slurm/config.yaml").read_text()
    profile = yaml.safe_load(text)
    resources = [profile["default-resources"], *profile["set-resources"].values()]
    assert not any("slurm_partition" in r or "gpu_model" in r for r in resources), resources
    assert "slurm-status-command" not in profile
    for key in ("slurm_partition:", "gpu_model:", "slurm-status-command:", "slurm_account:"):
        assert re.search(rf"^\s*# {key} ", text, re.MULTILINE), f"no commented {key} line to adapt"
    assert all(profile["set-resources"][rule] == {"gpu": 1} for rule in GPU_RULES)


@pytest.mark.skipif(slurmctld_path() is None, reason="SLURM is not installed (no slurmctld on PATH); "
                    "apt-get install slurmctld slurmd slurm-client munge")
def test_workflow_on_slurm_gives_the_local_result(e2e_run, tmp_path):
    """The small slice's jobs of each kind (:data:`RESULTS`), SmolLM2 named by its hub id (served on 127.0.0.1 from
    the local run's dequantised weights): looked up and downloaded by the snakemake process (a login node's), every
    job offline, and every result byte-identical to the local run of the bundled GGUF model."""
    from hub_server import HubServer, Repo
    from test_hub import SMOLLM2

    config = small_config()
    config["models"]["smollm2-135m"] = {"hub": {"id": SMOLLM2}, "layer_chunk_size": 15,
                                        "compute_params_m": config["models"]["smollm2-135m"]["compute_params_m"]}
    hub = HubServer({SMOLLM2: Repo(e2e_run / "resources/models/smollm2-135m")})
    with hub, slurm_cluster(tmp_path / "slurm") as cluster:
        # the project's profile, adapted to this cluster only: no accounting (docs/cluster.md: squeue), its GPU
        # type, its size; no partition: the jobs go to the cluster's default one, as on a cluster never described
        profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
        profile["slurm-status-command"] = "squeue"  # sacct fails without slurmdbd; MinJobAge=7200 here
        for rule in GPU_RULES:
            profile["set-resources"][rule]["gpu_model"] = cluster.gpu_model
        profile["max-threads"] = os.cpu_count()  # extraction.threads (8) > the node's CPUs; the local run has 2 too
        profile["slurm-init-seconds-before-status-checks"] = 2  # not 40: the jobs here take seconds
        profile["seconds-between-status-checks"] = 2  # not 10, for the same reason
        (tmp_path / "profile").mkdir()
        (tmp_path / "profile/config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))

        workdir = tmp_path / "run"
        # the README's command, `snakemake --profile profiles/slurm`, asked for these files
        command, env = snakemake_command(workdir, config, *RESULTS, profile=tmp_path / "profile")
        env.update(SLURM_CONF=cluster.env["SLURM_CONF"], HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"))
        # jobs inherit this environment (sbatch --export=ALL): the venv's python comes first
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
        start = time.monotonic()
        result = subprocess.run(command, capture_output=True, text=True, timeout=1800, env=env, cwd=workdir)
        output = result.stdout + result.stderr
        print(f"\nSLURM run: {time.monotonic() - start:.0f} s, return code {result.returncode}")
        assert result.returncode == 0, output[-6000:]

        submitted = SUBMITTED.findall(output)
        states = {}  # every job this cluster has seen, still listed for MinJobAge (slurm_cluster.py)
        for line in cluster.run("squeue", "--noheader", "--states=all",
                                "--Format=JobID:|,State:|,Comment:|,tres-per-job:|").splitlines():
            job_id, state, comment, gres = line.split("|")[:4]
            states[job_id] = (state, comment, gres)
            print(f"SLURM job {job_id}: {state} {comment} gres={gres}")
        print(f"SLURM job ids submitted by Snakemake: {' '.join(submitted)}")

    assert sorted(submitted, key=int) == sorted(states, key=int), (submitted, states)
    assert all(state == "COMPLETED" for state, _, _ in states.values()), states
    rules = Counter(re.sub(r"_wildcards_.*", "", comment).removeprefix("rule_") for _, comment, _ in states.values())
    # everything but the local rule (the download) ran as a SLURM job, once (both layer chunks: the answers read
    # the last layer's)
    assert rules == {"prepare_prompts": 1, "extract_hidden_states": 2, "answer_emotions": 1, "fit_probes": 1,
                     "fit_text_baseline": 1, "intervene": 1}
    assert all("gpu" in gres for _, comment, gres in states.values()
               if any(rule in comment for rule in GPU_RULES))
    # the hub was asked once, by the snakemake process's parse, and the weights fetched once, by its download: no
    # job (each parses the workflow again) asked it anything
    looked_up = [r for r in hub.requests if r.path == f"/api/models/{SMOLLM2}"]
    fetched = [r.path for r in hub.requests if r.method == "GET" and r.path.endswith("/model.safetensors")]
    config_heads = [r for r in hub.requests if r.method == "HEAD" and r.path.endswith("/config.json")]
    assert len(looked_up) == 1 and len(fetched) == 1 and len(config_heads) <= 2, hub.requests  # parse, download
    assert "localrule download_model:" in output

    from conftest import TOKEN

    leaked = [p for p in workdir.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert leaked == [], "the hub token reached a file of the run"
    for name in RESULTS:
        same = (workdir / name).read_bytes() == (e2e_run / name).read_bytes()
        print(f"{name}: {'byte-identical to' if same else 'DIFFERENT from'} the local run")
        assert same, name
