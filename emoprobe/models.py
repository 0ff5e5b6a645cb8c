"""Locate, prepare and load the language models named in the config.

A model comes from exactly one source:

``hub``   a Hugging Face hub id, with an optional revision, downloaded once into a
          folder by :func:`emoprobe.hub.download_snapshot` (rule ``download_model``)
          and loaded from there;
``local`` a directory holding a transformers model in safetensors;
``gguf``  a GGUF file shipped inside installed Python packages, possibly split in
          parts that are concatenated, then dequantised once into a local
          safetensors directory by :func:`prepare_gguf`.

Weights are loaded from safetensors only (``use_safetensors=True``) and remote
code runs only when the config says ``trust_remote_code: true`` for the model.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import torch

from emoprobe.architecture import model_source
from emoprobe.errors import UserError
from emoprobe.io import (FOLDER_RECORD, atomic_directory, changed_files, folder_files, sha256_of,
                         write_folder_record)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelError(UserError):
    """A model source cannot be used; the message names the model and the problem."""


def assemble_gguf(parts: list[str | Path], sha256: str | None, dest: Path) -> Path:
    """Concatenate the GGUF file's ``parts`` (paths, in order; one if unsplit) into ``dest``, verifying
    ``sha256`` of the whole first."""
    parts = [Path(part) for part in parts]
    if sha256 is not None:
        actual = sha256_of(parts)
        if actual != sha256:
            raise ModelError(f"GGUF from {[str(p) for p in parts]}: sha256 is {actual}, the config expects {sha256}")
    with open(dest, "wb") as out:
        for part in parts:
            with open(part, "rb") as handle:
                shutil.copyfileobj(handle, out, 1 << 22)
    return dest


def prepare_gguf(parts: list[str | Path], sha256: str | None, out_dir: Path, dtype: str = "float32") -> None:
    """Dequantise the GGUF model whose file is the concatenation of ``parts`` (paths, resolved by the
    workflow from the config's ``gguf.files`` with :func:`emoprobe.architecture.package_file`) into a
    safetensors model directory ``out_dir``.

    Written to a temporary sibling directory that takes ``out_dir``'s place only when whole
    (:func:`emoprobe.io.atomic_directory`), so an interrupted run leaves no directory that looks complete, with
    the sha256 of each file it holds (:func:`emoprobe.io.write_folder_record`), which :func:`model_folder`
    verifies before every load.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as staged, tempfile.TemporaryDirectory(dir=staged.parent,
                                                                          prefix=f".{out_dir.name}.gguf.") as tmp:
        gguf = assemble_gguf(parts, sha256, Path(tmp) / "model.gguf")
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # dequantize=True: plain dense weights whatever GGUF kernels are installed,
        # so the hidden states come from ordinary torch matmuls on every machine.
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent,
            gguf_file=gguf.name,
            dtype=DTYPES[dtype],
            quantization_config=GgufConfig(dequantize=True),
        )
        # Once dequantised the model is an ordinary dense one; drop the quantizer
        # that would otherwise refuse to serialise it.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staged, safe_serialization=True)
        tokenizer.save_pretrained(staged)
        write_folder_record(staged, {"gguf": [Path(part).name for part in parts], "sha256": sha256, "dtype": dtype})


def model_folder(name: str, model: dict, model_dir: str) -> str:
    """The folder model ``name`` (``model``: its entry under ``models``, or :func:`emoprobe.plan.model_identity`)
    loads from: ``model_dir``, the job's input (:func:`emoprobe.plan.model_dir`). A folder the workflow prepared (a
    hub or GGUF model's) is first verified byte for byte against the sha256 recorded when it was written
    (:func:`verify_folder`), and a hub model's checked to hold the commit the workflow resolved
    (:func:`check_snapshot`); a ``local`` model's folder is the user's, loaded as it is. No model is ever loaded
    from the hub itself."""
    source = model_source(name, model)
    if source == "hub":
        check_snapshot(Path(model_dir), name, model["hub"]["commit"])
    if source != "local":
        verify_folder(Path(model_dir), name)
    return model_dir


def verify_folder(folder: Path, name: str) -> None:
    """Refuse the prepared folder of model ``name`` when a file's sha256 differs from the one recorded when the
    folder was written (:func:`emoprobe.io.changed_files`), or a file was added or removed since, before a flipped
    byte in a weight changes every state; logs what the check took."""
    start = time.perf_counter()
    try:
        changed = changed_files(folder)
    except (OSError, ValueError, KeyError):
        raise ModelError(f"{folder / FOLDER_RECORD}: missing or unreadable, so the files of {folder} cannot be "
                         f"verified (it was prepared by an older emoprobe, or not by this workflow): delete the "
                         f"folder and run the same command again, which prepares model {name} again") from None
    if changed:
        raise ModelError(f"{folder}: {', '.join(changed)} differ from the sha256 recorded when model {name} was "
                         f"prepared ({FOLDER_RECORD}): the bytes changed since. Delete the folder and run the same "
                         f"command again, which prepares it again")
    files = folder_files(folder)
    logging.getLogger(__name__).info("model %s: the %d files of %s (%.0f MB) match their sha256, checked in %.2f s",
                                     name, len(files), folder, sum((folder / f).stat().st_size for f in files) / 1e6,
                                     time.perf_counter() - start)


def check_snapshot(folder: Path, name: str, commit: str) -> None:
    """Refuse a downloaded hub model's folder that does not hold ``commit`` (its revision moved since the download,
    or the folder was not written by :func:`emoprobe.hub.download_snapshot`)."""
    record = Path(folder) / FOLDER_RECORD
    try:
        held = json.loads(record.read_text(encoding="utf-8"))["commit"]
    except (OSError, ValueError, KeyError):
        raise ModelError(f"{record}: missing or unreadable, so {folder} is not a folder download_model wrote: delete "
                         f"it, and the rerun downloads model {name} again") from None
    if held != commit:
        raise ModelError(f"{folder} holds commit {held} of model {name}, the workflow resolved {commit}: delete the "
                         f"folder, and the rerun downloads it again")


def load_configured_model(name: str, model: dict, model_dir: str, *, dtype: str, device: torch.device,
                          head: bool = False):
    """Load model ``name`` of the config (``model``: its entry under ``models``) with its tokenizer from its folder
    (:func:`model_folder`), as :func:`load_decoder` loads it: the base decoder, or with ``head`` the causal LM.
    Returns ``(model, tokenizer)``."""
    return load_decoder(model_folder(name, model, model_dir), dtype=dtype, device=device,
                        trust_remote_code=model["trust_remote_code"], head=head)


def shares_one_kv_head(config) -> bool:
    """Whether all query heads of the model share a single key/value head (Gemma-3-270M and -1B).

    transformers then hands SDPA keys and values whose heads are that one head broadcast (a stride-0
    view made by ``repeat_kv``), not copies as for two or more key/value heads.
    """
    config = config.get_text_config()
    heads = config.num_attention_heads
    return (getattr(config, "num_key_value_heads", None) or heads) == 1 < heads


def exact_attention_for_broadcast_heads(model, device: torch.device) -> bool:
    """On CUDA, turn SDPA's memory-efficient kernel off (for this process) if ``model`` shares one
    key/value head; returns whether it did.

    That kernel returns wrong outputs for broadcast (stride-0) key/value heads, which transformers'
    ``repeat_kv`` makes of a single one, when the key length is one more than a multiple of 32
    (pytorch/pytorch#191937, fixed after torch 2.11): on an H100 with torch 2.11 it was off by about
    the output's own size at 33, 65, 97 and 129 keys and exact on copied heads
    (``benchmarks/sdpa_broadcast_heads.py``), and Gemma-3-270M's states by 0.22 of their norm
    (docs/performance.md, "On a GPU"). Without that kernel, float32 attention runs in the math
    kernel, which is exact and takes memory quadratic in the prompt length.
    """
    if device.type != "cuda" or not shares_one_kv_head(model.config):
        return False
    torch.backends.cuda.enable_mem_efficient_sdp(False)
    logging.getLogger(__name__).info("one key/value head shared by all query heads: SDPA's memory-efficient "
                                     "kernel is off (pytorch/pytorch#191937)")
    return True


def load_decoder(folder: str, *, dtype: str, device: torch.device, trust_remote_code: bool, head: bool = False):
    """Load the base decoder (without the LM head unless ``head``) and its tokenizer from ``folder``, never from the
    hub, padded on the left, with exact attention kernels on CUDA (:func:`exact_attention_for_broadcast_heads`).

    Returns
    -------
    model : transformers.PreTrainedModel
        The base model (e.g. ``LlamaModel``), or with ``head`` the causal LM (e.g.
        ``LlamaForCausalLM``), in eval mode on ``device``.
    tokenizer : transformers.PreTrainedTokenizerBase
        With ``padding_side == "left"`` and a pad token (the EOS token if the model has none).
    """
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    common = dict(trust_remote_code=trust_remote_code, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, **common)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = (AutoModelForCausalLM if head else AutoModel).from_pretrained(folder, dtype=DTYPES[dtype], use_safetensors=True, **common)
    exact_attention_for_broadcast_heads(model, device)
    return model.to(device).eval(), tokenizer


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's list of decoder blocks, in order.

    Found as the ``ModuleList`` holding ``config.num_hidden_layers`` blocks, so it
    works across architectures (Llama, Gemma, Mistral, Phi, OLMo ...).
    """
    n_layers = model.config.num_hidden_layers
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers:
            return module
    raise ModelError(f"{type(model).__name__}: no list of {n_layers} decoder layers found")
