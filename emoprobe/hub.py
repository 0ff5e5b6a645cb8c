"""Models from the Hugging Face hub: what a hub id and revision are, asked once when the workflow is parsed, and
their download into one folder that every job reads offline.

When Snakemake parses the workflow in its main process (on a laptop, or a cluster's login node),
:func:`resolve` asks the hub (``huggingface_hub``, which reads ``HF_ENDPOINT`` and ``HF_TOKEN``) for the
repository at the revision: the commit the revision points to, the files there, the parameter count the hub
computed from the safetensors headers, and ``config.json`` (that file only). A misspelt id, a missing revision,
a gated repository without a token of an account that accepted its licence, and a repository without
safetensors weights stop the parse with a :class:`HubError` that says what to do. What the hub said is kept in
:data:`RECORD_DIR` ``/{model}.json``; a job (on a compute node that may have no internet) and a main process
that cannot reach the hub read it from there, from the downloaded folder, or from the Hugging Face cache, and
never ask the hub.

:func:`download_snapshot` (rule ``download_model``, a local rule: on the login node) fetches the safetensors
weights, the tokenizer and the configuration at the resolved commit into ``resources/models/{model}``, whole or
not at all, with :data:`emoprobe.io.FOLDER_RECORD` saying which repository and commit it holds and each file's sha256.

``huggingface_hub`` is imported lazily: the jobs' environments that never download do not hold it.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from emoprobe.errors import ConfigError
from emoprobe.io import FOLDER_RECORD, atomic_directory, folder_files, write_folder_record

# Where the main process keeps what the hub said (relative to the working directory), for jobs and offline parses.
RECORD_DIR = Path(".snakemake/emoprobe/hub")
# Where rule download_model puts each model (plan.MODEL_DIR, which is built from this: the plan imports this module).
DOWNLOADS = Path("resources/models")
# Besides the weights (:func:`weight_files`), what a job loads: the configuration and the tokenizer's files, from the
# repository's top folder; never *.bin (pickles).
PATTERNS = ("*.json", "tokenizer.model", "*.tiktoken", "merges.txt", "vocab.txt", "*.jinja")
# The model's own Python code, downloaded only where the config says trust_remote_code: true.
REMOTE_CODE_PATTERNS = ("*.py",)
# Seconds to wait for the hub's answer when the workflow is parsed (huggingface_hub's own default waits forever).
TIMEOUT = 20


class HubError(ConfigError):
    """A hub model cannot be used as configured; the message names the model, the key and the fix."""


@dataclass(frozen=True)
class HubModel:
    """What the hub says of a repository at a revision.

    repo_id, revision : as configured (revision None: the default branch).
    commit : the 40-hex commit the revision pointed to when it was resolved.
    config : the repository's ``config.json``.
    params : parameters of the safetensors weights as the hub counts them, or None if unknown.
    files : the repository's files at the commit (empty where unknown: read from the Hugging Face cache).
    folder : where its weights were found on disk (a downloaded folder, the cache's snapshot), or None.
    """

    repo_id: str
    revision: str | None
    commit: str
    config: dict
    params: int | None
    files: tuple[str, ...]
    folder: str | None = None


def patterns(trust_remote_code: bool) -> list[str]:
    """The file patterns :func:`download_snapshot` fetches besides the weights."""
    return list(PATTERNS) + (list(REMOTE_CODE_PATTERNS) if trust_remote_code else [])


def top_files(files) -> list[str]:
    """The files of a repository's top folder, where transformers looks."""
    return sorted(f for f in files if "/" not in f)


def weight_files(files, index: dict | None) -> list[str]:
    """The safetensors files transformers loads from a repository holding ``files``: the shards its
    ``model.safetensors.index.json`` (``index``, read) names, else ``model.safetensors``, else every top-level
    ``*.safetensors`` (not, say, a ``consolidated.safetensors`` in another format beside the shards)."""
    top = top_files(files)
    if index is not None:
        return sorted(set(index.get("weight_map", {}).values()))
    if "model.safetensors" in top:
        return ["model.safetensors"]
    return [f for f in top if f.endswith(".safetensors")]


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def ask_hub(name: str, repo_id: str, revision: str | None) -> HubModel:
    """Ask the hub what ``repo_id`` at ``revision`` is (two requests: the repository's metadata, and
    ``config.json``, which goes into the Hugging Face cache).

    Raises :class:`HubError` for a repository that does not exist (or is private), a revision that does not, a
    gated repository the token cannot read, or one without safetensors weights. Connection errors, the hub's own
    failures (5xx) and ``HF_HUB_OFFLINE`` propagate as raised by ``huggingface_hub``.
    """
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import (DisabledRepoError, GatedRepoError, HfHubHTTPError, RemoteEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    at = f"{endpoint()}/{repo_id}"
    token = "set HF_TOKEN (in the environment of the snakemake command) to a token of that account"
    try:
        info = HfApi().model_info(repo_id, revision=revision, timeout=TIMEOUT)
        files = tuple(sibling.rfilename for sibling in info.siblings or ())
        if not any(name_.endswith(".safetensors") for name_ in top_files(files)):
            raise HubError(f"models.{name}.hub: {repo_id!r} at {info.sha} has no *.safetensors weights (its files: "
                           f"{', '.join(files) or 'none'}); the workflow loads safetensors only, never pickled "
                           f"*.bin weights: choose a revision or repository with safetensors, or convert the model "
                           f"yourself and give its folder as models.{name}.local")
        config_path = hf_hub_download(repo_id, "config.json", revision=info.sha, etag_timeout=TIMEOUT)
    except GatedRepoError:
        raise HubError(f"models.{name}.hub.id: {repo_id!r} is a gated repository and the token given cannot read it "
                       f"({'HF_TOKEN is set' if os.environ.get('HF_TOKEN') else 'HF_TOKEN is not set'}): accept its "
                       f"licence at {at} with your account, then {token}") from None
    except RevisionNotFoundError:
        raise HubError(f"models.{name}.hub.revision: {revision!r} is not a branch, tag or commit of {repo_id!r} "
                       f"(see {at}/tree/main); leave it out for the default branch") from None
    except RepositoryNotFoundError:
        raise HubError(f"models.{name}.hub.id: no model repository {repo_id!r} on {endpoint()} (misspelt? The id is "
                       f"'owner/name' as on the model's page; a private repository needs HF_TOKEN)") from None
    except RemoteEntryNotFoundError:
        raise HubError(f"models.{name}.hub: {repo_id!r} at {revision or 'main'} has no config.json: not a "
                       f"transformers model") from None
    except DisabledRepoError:
        raise HubError(f"models.{name}.hub.id: the hub has disabled {repo_id!r} ({at})") from None
    except HfHubHTTPError as err:
        if err.response is not None and err.response.status_code in (401, 403):
            raise HubError(f"models.{name}.hub.id: the hub refused {repo_id!r} ({err.response.status_code}): if it "
                           f"is private or gated, {token}; if HF_TOKEN is set, it may have expired") from None
        raise
    config = json.loads(Path(config_path).read_text(encoding="utf-8"))
    params = info.safetensors.total if info.safetensors else None
    return HubModel(repo_id, revision, info.sha, config, params, files)


def record_path(workdir: Path, name: str) -> Path:
    return Path(workdir) / RECORD_DIR / f"{name}.json"


def write_record(path: Path, model: HubModel) -> None:
    """Keep ``model`` at ``path``, atomically (a parse killed half-way leaves the old record or none)."""
    from emoprobe.io import atomic_path

    with atomic_path(path) as partial:
        Path(partial).write_text(json.dumps({**asdict(model), "folder": None}, indent=1, sort_keys=True),
                                 encoding="utf-8")


def read_record(path: Path, repo_id: str, revision: str | None) -> HubModel | None:
    """The model kept at ``path`` if it is of ``repo_id`` at ``revision``, else None."""
    try:
        kept = json.loads(Path(path).read_text(encoding="utf-8"))
        model = HubModel(**{**kept, "files": tuple(kept["files"])})
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return model if (model.repo_id, model.revision) == (repo_id, revision) else None


def read_snapshot(folder: Path, repo_id: str, revision: str | None) -> HubModel | None:
    """The model a downloaded folder (:func:`download_snapshot`) holds, if of ``repo_id`` at ``revision``."""
    try:
        kept = json.loads((Path(folder) / FOLDER_RECORD).read_text(encoding="utf-8"))
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (kept.get("repo_id"), kept.get("revision")) != (repo_id, revision):
        return None
    return HubModel(repo_id, revision, kept["commit"], config, None, tuple(sorted(kept["files"])), str(folder))


def read_hf_cache(repo_id: str, revision: str | None) -> HubModel | None:
    """The model's ``config.json`` in the Hugging Face cache (``hf download``, or an earlier transformers load), if
    there; the commit is the cache's snapshot folder's name. Never goes online."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    if not isinstance(found, str):
        return None
    try:
        config = json.loads(Path(found).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return HubModel(repo_id, revision, Path(found).parent.name, config, None, (), str(Path(found).parent))


# Why the hub could not be reached in this process, once it could not: the other models are not asked again (a
# network that drops packets would otherwise cost a time-out per model).
_unreachable: list[str] = []


def resolve(name: str, repo_id: str, revision: str | None, workdir: Path, ask: bool) -> tuple[HubModel | None, str]:
    """What hub model ``name`` (``repo_id`` at ``revision``) is: ``(model, "")``, or ``(None, why)`` where nothing
    says.

    With ``ask`` (the workflow's main process), the hub is asked (:func:`ask_hub`) and its answer kept for the
    jobs; when it cannot be reached (``HF_HUB_OFFLINE``, no connection, a failing hub), the answer comes from, in
    turn, the record of the last parse, the downloaded folder in :data:`DOWNLOADS`, and the Hugging Face cache;
    without ``ask`` (a job) from the downloaded folder first; ``why`` says why none of them could answer, and what fixes it. Raises
    :class:`HubError` when the hub refuses the model.
    """
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    record = record_path(workdir, name)
    why = "a job never asks the hub"
    if ask and constants.HF_HUB_OFFLINE:
        why = "HF_HUB_OFFLINE is set"
    elif ask and _unreachable:
        why = _unreachable[0]
    elif ask:
        try:
            model = ask_hub(name, repo_id, revision)
        # LocalEntryNotFoundError: config.json's download failed (a time-out, a 5xx) and the cache lacks it; a
        # ValueError: an answer that is no JSON (a captive portal's page)
        except (httpx2.TransportError, OfflineModeIsEnabled, HfHubHTTPError, LocalEntryNotFoundError, ValueError) as err:
            why = f"the hub at {endpoint()} could not be reached ({type(err).__name__}: {str(err).splitlines()[0]})"
            _unreachable.append(why)
        else:
            write_record(record, model)
            return model, ""
    # A job reads the folder it was given first: fixed for the run, whatever a parse since has recorded.
    kept = [lambda: read_record(record, repo_id, revision),
            lambda: read_snapshot(Path(workdir) / DOWNLOADS / name, repo_id, revision)]
    for read in (kept if ask else kept[::-1]) + [lambda: read_hf_cache(repo_id, revision)]:
        found = read()
        if found is not None:
            return found, ""
    at = repo_id if revision is None else f"{repo_id} --revision {revision}"
    return None, (f"{why}, and {repo_id!r} at {revision or 'main'} has not been looked up here before (no "
                  f"{RECORD_DIR / (name + '.json')}, no {DOWNLOADS / name}, nothing in the Hugging Face cache). "
                  f"Run the workflow once where the hub can be reached (a cluster's login node; `snakemake "
                  f"--dry-run` is enough), or there `hf download {at} config.json`")


def download_snapshot(repo_id: str, revision: str | None, commit: str, out_dir: Path, patterns: list[str]) -> dict:
    """Download ``repo_id`` at ``commit`` (the resolved ``revision``): its weights (:func:`weight_files`) and the
    top-level files matching ``patterns`` (:func:`patterns`), into ``out_dir``, whole or not at all
    (:func:`emoprobe.io.atomic_directory`), with :data:`emoprobe.io.FOLDER_RECORD`. Returns that record: ``repo_id``,
    ``revision`` (as configured, for the offline look-up), ``commit`` and ``files`` (name -> sha256)."""
    from fnmatch import fnmatchcase

    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    files = [s.rfilename for s in HfApi().model_info(repo_id, revision=commit).siblings or ()]
    with atomic_directory(out_dir) as staged:
        index = None
        if "model.safetensors.index.json" in files:
            index = json.loads(Path(hf_hub_download(repo_id, "model.safetensors.index.json", revision=commit,
                                                    local_dir=staged)).read_text(encoding="utf-8"))
        weights = weight_files(files, index)
        if not weights:
            raise HubError(f"{repo_id} at {commit}: no *.safetensors weights in its top folder (files: {files})")
        wanted = weights + [f for f in top_files(files) if any(fnmatchcase(f, p) for p in patterns)
                            and f != FOLDER_RECORD and not f.startswith(".")]  # the record is ours to write
        snapshot_download(repo_id, revision=commit, local_dir=staged, allow_patterns=wanted)
        shutil.rmtree(staged / ".cache", ignore_errors=True)  # huggingface_hub's own bookkeeping of the download
        got = folder_files(staged)
        if missing := sorted(set(wanted) - set(got)):
            raise HubError(f"{repo_id} at {commit}: {missing} were not downloaded")
        record = write_folder_record(staged, {"repo_id": repo_id, "revision": revision, "commit": commit})
    return record
