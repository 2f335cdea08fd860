"""A versioned model registry on disk: safetensors weights + a JSON model card per version, atomic publish,
explicit promote and rollback.

Layout of a registry root::

    <root>/<name>/v1/model.safetensors   weights (safetensors, shared tensors stored once)
    <root>/<name>/v1/card.json           the model card (sha256 and size of every file, metrics, …)
    <root>/<name>/v1/tokenizer.json      extra files given to publish (text models need the tokenizer)
    <root>/<name>/v1/manifest.json       size and sha256 of every file of the version, the card included
    <root>/<name>/promoted.json          {"version": "v2", "history": ["v1", "v2"]}: promotions, newest last

A version folder is written as a hidden temporary folder and renamed into place, so a reader sees a
version completely or not at all; version numbers and the promoted pointer change under an OS-level file
lock (`<root>/<name>/.lock`, `filelock`), which dies with its holder, so it never needs breaking.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from .architectures import ARCHITECTURE_TASKS, TASKS, build_model, check_architecture
from .checks import (
    ModelNotFoundError,
    RegistryError,
    check_files,
    check_json,
    check_labels,
    check_metrics,
    check_model,
    check_name,
    check_preprocessing,
    check_version,
    InvalidNameError,
    is_name,
    is_version,
    version_number,
)
from ..files import (
    MANIFEST_FILE,
    IntegrityError,
    LockTimeout,
    atomic_write_json,
    file_entry,
    file_lock,
    publish_directory,
    staging_directory,
    verify_manifest,
    write_manifest,
)

if TYPE_CHECKING:
    from .loaded import LoadedModel

__all__ = ["DamagedEntry", "InvalidNameError", "ModelCard", "ModelNotFoundError", "ModelRegistry", "RegistryError",
           "check_name", "check_version"]

CARD_FORMAT, CARD_FORMAT_VERSION = "bigmodel_course.ModelCard", 1
WEIGHTS_FILE, CARD_FILE, POINTER_FILE, TOKENIZER_FILE = (
    "model.safetensors", "card.json", "promoted.json", "tokenizer.json")
LOCK_FILE = ".lock"
RESERVED_FILES = (WEIGHTS_FILE, CARD_FILE, MANIFEST_FILE)


@dataclass
class ModelCard:
    """What the registry knows about one published model version (stored as card.json next to the weights)."""

    name: str
    version: str
    task: str
    architecture: str
    config: dict
    labels: list[str]
    metrics: dict[str, float]
    preprocessing: dict
    sha256: str  # of model.safetensors
    created: str  # ISO 8601, UTC
    weights_bytes: int
    num_parameters: int
    files: dict[str, dict] = field(default_factory=dict)  # file name -> {"bytes", "sha256"}, weights included
    description: str = ""
    software: dict[str, str] = field(default_factory=dict)
    promoted: bool = False  # not stored: read from promoted.json

    def to_dict(self) -> dict:
        """Plain dict for JSON (with the promoted flag)."""
        return asdict(self)

    def summary(self) -> dict:
        """The fields a client needs to choose a model (what GET /v1/models returns)."""
        keys = ("name", "version", "task", "architecture", "labels", "metrics", "sha256", "created",
                "num_parameters", "description", "promoted")
        return {k: getattr(self, k) for k in keys}

    @classmethod
    def from_dict(cls, data: dict) -> "ModelCard":
        """Rebuild a card from card.json contents; unknown keys are ignored, missing ones rejected."""
        if not isinstance(data, dict) or data.get("format") != CARD_FORMAT:
            raise ValueError(f"not a model card (expected format {CARD_FORMAT!r})")
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise ValueError(f"model card lacks {missing}")
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class DamagedEntry:
    """A registry entry that cannot be read: a version (version None: the model's promoted pointer or canary file)."""

    name: str
    version: str | None
    problem: str  # paths relative to the registry root


@contextmanager
def _registry_lock(folder: Path) -> Iterator[None]:
    """The model folder's lock; RegistryError when another process holds it too long."""
    try:
        with file_lock(folder / LOCK_FILE):
            yield
    except LockTimeout as e:
        raise RegistryError(f"registry lock {e}") from None


def _software() -> dict[str, str]:
    """Versions of the libraries that wrote a model."""
    import safetensors

    from .. import __version__ as package_version

    return {"bigmodel_course": package_version, "torch": torch.__version__, "safetensors": safetensors.__version__}


class ModelRegistry:
    """Versioned models on disk: publish, list, promote, roll back, load (see the module docstring for the layout)."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        if root is None:
            from ..utils import cache_dir

            env = os.environ.get("BIGMODEL_REGISTRY")
            root = Path(env) if env else cache_dir("registry")
        self.root = Path(root).expanduser().resolve()
        if self.root.exists() and not self.root.is_dir():
            raise RegistryError(f"registry root {self.root} is not a folder")
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"ModelRegistry({str(self.root)!r})"

    # ------------------------------------------------------------ reading

    def names(self) -> list[str]:
        """Names of the registered models, sorted."""
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and is_name(p.name))

    def _model_dir(self, name: str) -> Path:
        """Folder of a registered model, or ModelNotFoundError naming it."""
        folder = self.root / check_name(name)
        if not folder.is_dir():
            known = ", ".join(self.names()) or "none"
            raise ModelNotFoundError(f"unknown model {name!r}; registered models: {known}")
        return folder

    def _version_names(self, folder: Path) -> list[str]:
        """'v1', 'v2', … present in a model folder, in numeric order."""
        found = [p.name for p in folder.iterdir() if p.is_dir() and is_version(p.name)]
        return sorted(found, key=version_number)

    def _pointer(self, folder: Path) -> dict:
        """The promoted pointer {"version", "history"} ({} when nothing was promoted)."""
        path = folder / POINTER_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, json.JSONDecodeError) as e:
            raise RegistryError(f"{path} is unreadable: {e}") from None
        if not isinstance(data, dict) or not isinstance(data.get("history"), list) or not data["history"] \
                or not is_version(data.get("version")) or not all(is_version(v) for v in data["history"]):
            raise RegistryError(f"{path} is not a promoted pointer")
        return data

    def _read_card(self, folder: Path, version: str, promoted: str | None) -> ModelCard:
        """The card of one version folder."""
        path = folder / version / CARD_FILE
        try:
            card = ModelCard.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise RegistryError(f"{path} is missing") from None
        except (OSError, ValueError, TypeError) as e:
            raise RegistryError(f"{path} is not a valid model card: {e}") from None
        if card.name != folder.name or card.version != version:
            raise RegistryError(f"{path} describes {card.name}/{card.version}, not {folder.name}/{version}")
        card.promoted = version == promoted
        return card

    def versions(self, name: str) -> list[ModelCard]:
        """Cards of every published version of `name`, oldest first."""
        folder = self._model_dir(name)
        promoted = self._pointer(folder).get("version")
        return [self._read_card(folder, v, promoted) for v in self._version_names(folder)]

    def list(self) -> list[ModelCard]:
        """Cards of every version of every model (each with its `promoted` flag); RegistryError at the first
        damaged entry (`scan` skips them instead)."""
        return [card for name in self.names() for card in self.versions(name)]

    def scan(self) -> tuple[list[ModelCard], list[DamagedEntry]]:
        """Cards of every readable version, and the entries that cannot be read, so one damaged version never
        hides the others. A model whose promoted pointer is unreadable lists its versions as not promoted."""
        cards, damaged = [], []
        for name in self.names():
            folder = self.root / name
            try:
                promoted = self._pointer(folder).get("version")
            except RegistryError as e:
                damaged.append(DamagedEntry(name, None, self.relative(e)))
                promoted = None
            for version in self._version_names(folder):
                try:
                    cards.append(self._read_card(folder, version, promoted))
                except RegistryError as e:
                    damaged.append(DamagedEntry(name, version, self.relative(e)))
        return cards, damaged

    def relative(self, error: Exception) -> str:
        """An error message with the registry root cut from its paths (for clients)."""
        return str(error).replace(f"{self.root}{os.sep}", "")

    def card(self, name: str, version: str) -> ModelCard:
        """The card of one version, or ModelNotFoundError naming it."""
        folder = self._model_dir(name)
        check_version(version)
        if not (folder / version).is_dir():
            have = ", ".join(self._version_names(folder)) or "none"
            raise ModelNotFoundError(f"model {name!r} has no version {version!r}; versions: {have}")
        return self._read_card(folder, version, self._pointer(folder).get("version"))

    def promoted_version(self, name: str) -> str:
        """The promoted version of `name` (one small file read), or ModelNotFoundError naming the model."""
        version = self._pointer(self._model_dir(name)).get("version")
        if version is None:
            raise ModelNotFoundError(f"model {name!r} has no promoted version; promote one first")
        return version

    def promoted(self, name: str) -> ModelCard:
        """The card of the promoted version of `name`."""
        return self.card(name, self.promoted_version(name))

    # ------------------------------------------------------------ promotion

    def promote(self, name: str, version: str) -> ModelCard:
        """Make `version` the one the service loads; the previous one is kept for rollback."""
        card = self.card(name, version)
        folder = self.root / name
        with _registry_lock(folder):
            history = self._pointer(folder).get("history", [])
            if not history or history[-1] != version:
                history = [*history, version]
            atomic_write_json(folder / POINTER_FILE, {"version": version, "history": history})
        card.promoted = True
        return card

    def rollback(self, name: str) -> ModelCard:
        """Promote again the version that was promoted before the current one."""
        folder = self._model_dir(name)
        with _registry_lock(folder):
            history = self._pointer(folder).get("history", [])
            if len(history) < 2:
                current = f" (promoted: {history[-1]})" if history else ""
                raise RegistryError(f"model {name!r} has no previously promoted version to roll back to{current}")
            history = history[:-1]
            if not (folder / history[-1]).is_dir():
                raise RegistryError(f"cannot roll back {name!r}: version {history[-1]} no longer exists")
            atomic_write_json(folder / POINTER_FILE, {"version": history[-1], "history": history})
        return self.card(name, history[-1])

    # ------------------------------------------------------------ writing

    def publish(
        self,
        name: str,
        model: nn.Module,
        *,
        task: str,
        architecture: str,
        config: dict,
        labels: Sequence[str],
        metrics: Mapping[str, float],
        preprocessing: Mapping,
        files: Mapping[str, str | os.PathLike] | Sequence[str | os.PathLike] | None = None,
        description: str = "",
    ) -> ModelCard:
        """Store `model` as the next version of `name` (v1, v2, …) atomically and return its card (not promoted)."""
        check_name(name)
        if task not in TASKS:
            raise RegistryError(f"unknown task {task!r}; expected one of {TASKS}")
        try:
            check_architecture(architecture, task)
        except ValueError as e:
            raise RegistryError(str(e)) from None
        if not isinstance(config, Mapping):
            raise RegistryError(f"config must be a dict, got {type(config).__name__}")
        config = dict(config)
        check_json(config, "config")
        labels = check_labels(labels)
        metrics = check_metrics(metrics)
        prep = check_preprocessing(task, preprocessing, config)
        check_json(prep, "preprocessing")
        if not isinstance(description, str):
            raise RegistryError(f"description must be a string, got {type(description).__name__}")
        extra = check_files(files, RESERVED_FILES)
        if task == "text":
            self._check_tokenizer(extra, config)
        n_params = check_model(model, architecture, config, task, len(labels))

        folder = self.root / name
        import safetensors.torch

        with staging_directory(folder, "version") as tmp:
            safetensors.torch.save_model(model, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
            for file_name, source in extra.items():
                shutil.copyfile(source, tmp / file_name)
            entries = {f: file_entry(tmp / f) for f in [WEIGHTS_FILE, *extra]}
            with _registry_lock(folder):
                existing = self._version_names(folder)
                version = f"v{version_number(existing[-1]) + 1}" if existing else "v1"
                card = ModelCard(
                    name=name, version=version, task=task, architecture=architecture, config=config, labels=labels,
                    metrics=metrics, preprocessing=prep, sha256=entries[WEIGHTS_FILE]["sha256"],
                    created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    weights_bytes=entries[WEIGHTS_FILE]["bytes"], num_parameters=n_params, files=entries,
                    description=description, software=_software(),
                )
                stored = {"format": CARD_FORMAT, "format_version": CARD_FORMAT_VERSION, **card.to_dict()}
                del stored["promoted"]
                atomic_write_json(tmp / CARD_FILE, stored)
                write_manifest(tmp, known=entries)  # covers the card too: labels and preprocessing are checked
                publish_directory(tmp, folder / version)
        return card

    def _check_tokenizer(self, extra: dict[str, Path], config: dict) -> None:
        """A text model needs files={"tokenizer.json": path} holding a CharTokenizer that fits the model."""
        from ..tokenization import CharTokenizer

        if TOKENIZER_FILE not in extra:
            raise RegistryError("a text model needs its tokenizer: pass files={'tokenizer.json': path}")
        try:
            tokenizer = CharTokenizer.load(extra[TOKENIZER_FILE])
        except ValueError as e:
            raise RegistryError(f"tokenizer.json is not a CharTokenizer file: {e}") from None
        vocab = config.get("vocab_size")
        if isinstance(vocab, int) and tokenizer.vocab_size > vocab:
            raise RegistryError(f"the tokenizer has {tokenizer.vocab_size} tokens "
                                f"but the model's vocab_size is {vocab}")

    # ------------------------------------------------------------ loading

    def verify(self, name: str, version: str) -> ModelCard:
        """Check size and sha256 of every file of a version (card.json included) against its manifest, and the
        card's own file list against the manifest; RegistryError names a bad file."""
        self.card(name, version)  # ModelNotFoundError / RegistryError naming a missing or unreadable card
        folder = self.root / name / version
        try:
            manifest = verify_manifest(folder)
        except IntegrityError as e:
            raise RegistryError(str(e)) from None
        card = self.card(name, version)  # read again: this is the card the manifest just verified
        if CARD_FILE not in manifest or WEIGHTS_FILE not in card.files \
                or card.files[WEIGHTS_FILE]["sha256"] != card.sha256:
            raise RegistryError(f"{folder / CARD_FILE} does not record the weights' sha256")
        for file_name, expected in card.files.items():
            if manifest.get(file_name) != expected:
                raise RegistryError(f"{folder / CARD_FILE} and {folder / MANIFEST_FILE} disagree on {file_name}")
        return card

    def load(self, name: str, version: str | None = None, device: str | torch.device = "cpu") -> "LoadedModel":
        """The model of `version` (None: the promoted one) in eval mode, after verifying every file's sha256."""
        import safetensors.torch

        from ..tokenization import CharTokenizer
        from .loaded import LoadedModel

        start = time.perf_counter()
        version = self.promoted_version(name) if version is None else check_version(version)
        card = self.verify(name, version)
        folder = self.root / name / version
        if ARCHITECTURE_TASKS.get(card.architecture) != card.task:
            raise RegistryError(f"{folder / CARD_FILE}: architecture {card.architecture!r} "
                                f"does not serve task {card.task!r}")
        try:
            model = build_model(card.architecture, card.config)
            safetensors.torch.load_model(model, str(folder / WEIGHTS_FILE), strict=True, device=str(device))
        except Exception as e:  # safetensors and load_state_dict raise several error types
            raise RegistryError(f"cannot load {folder / WEIGHTS_FILE} into {card.architecture!r}: {e}") from None
        model.to(device).eval()
        tokenizer = CharTokenizer.load(folder / TOKENIZER_FILE) if card.task == "text" else None
        return LoadedModel(model=model, card=card, path=folder, tokenizer=tokenizer,
                           load_seconds=time.perf_counter() - start)
