"""What a request may load: the policy between a model name from an HTTP client and the file system.

A request may name a catalog alias, a model already loaded (the pool answers those before asking), a model
named on the command line, or a Hub spec whose files are already in the local cache. Local paths are the
operator's to give: on the command line, or by putting files under `--models-dir`. Downloads from a request
(an `hf://` spec not yet cached, Ollama's /api/pull) need `--allow-pull`.

A draft model (speculative decoding) passes the same rules: `--draft-model` is the operator's, as `--model`
is; a draft a catalog entry names is resolved as if a request had named it (an alias, a cached or, with
`--allow-pull`, any Hub spec, a path under `--models-dir`), so loading a model never reaches a file or a
download that naming it directly could not.

Everything else gets one refusal, the same words whatever the name points at. The decision is made on the
name alone before anything is opened, so a client cannot learn which files exist or make the server parse
an arbitrary file; inside `--models-dir` every path component is checked with lstat, and a symbolic link
whose target leaves the directory is refused without looking at its target.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Iterable

from serve.config import ServerConfig
from serve.errors import ConfigError, ModelNotAvailableError, PullNotAllowedError
from serve.models.catalog import Catalog, ModelSpec, parse_hub_spec, resolve_model

MAX_NAMES_LISTED = 20  # a refusal names what may be used; more would drown the message
MAX_SYMLINK_HOPS = 40  # as the kernel's own limit (ELOOP)


@dataclass(frozen=True)
class ModelAccess:
    catalog: Catalog
    configured: tuple[str, ...] = ()  # the command line's specs: the operator's, always allowed
    models_dir: Path | None = None  # resolved: symlink-free and absolute
    models_dir_given: Path | None = None  # as the operator wrote it (absolute): request paths may use it too
    allow_pull: bool = False
    configured_draft: str | None = None  # --draft-model: the operator's, always allowed as a draft

    @classmethod
    def from_config(cls, config: ServerConfig, catalog: Catalog) -> ModelAccess:
        """The policy of a server started with `config`; a --models-dir that is not a directory fails here."""
        models_dir = given = None
        if config.models_dir is not None:
            given = config.models_dir.expanduser().absolute()
            models_dir = given.resolve()
            if not models_dir.is_dir():
                raise ConfigError(f"--models-dir {config.models_dir} is not a directory")
        return cls(catalog, tuple(config.models), models_dir, given, config.allow_pull,
                   config.plan_choices.draft_model)

    def resolve(self, name: str | None, loaded: Iterable[str] = ()) -> ModelSpec:
        """The spec a request's model `name` stands for, if the request may load it; else the refusal
        (ModelNotAvailableError) listing `loaded` and the catalog. None is the embedded default."""
        if name is None or name in self.configured:
            return resolve_model(name, self.catalog)
        if name in self.catalog.models:
            return self.catalog.get(name)
        if name.startswith("hf://"):
            spec = self._hub_spec(name)
        else:
            spec = self._local_spec(name)
        if spec is None:
            raise self.refusal(name, loaded)
        return spec

    def resolve_draft(self, name: str) -> ModelSpec:
        """The spec of a draft model named by --draft-model (allowed) or by a catalog entry (allowed if a
        request could name it); else a refusal that names the draft and what would allow it."""
        if name == self.configured_draft:
            return resolve_model(name, self.catalog)
        try:
            return self.resolve(name)
        except ModelNotAvailableError:
            raise ModelNotAvailableError(
                f"draft model {name} is not available: a catalog entry's draft must be a catalog alias, a Hub spec "
                f"already pulled (or any with --allow-pull), or a path under --models-dir; or give it with "
                f"--draft-model", param="model") from None

    def resolve_pull(self, name: str, loaded: Iterable[str] = ()) -> ModelSpec:
        """The spec to download for a pull asked over HTTP (Ollama's /api/pull)."""
        if not self.allow_pull:
            raise PullNotAllowedError(
                f"this server does not download models for its clients: start it with --allow-pull, "
                f"or run `serve pull {name}` on the server machine")
        return self.resolve(name, loaded)

    def refusal(self, name: str, loaded: Iterable[str] = ()) -> ModelNotAvailableError:
        names = list(dict.fromkeys([*loaded, *self.catalog.models]))
        listed = ", ".join(names[:MAX_NAMES_LISTED]) or "none"
        if len(names) > MAX_NAMES_LISTED:
            listed += f" and {len(names) - MAX_NAMES_LISTED} more"
        return ModelNotAvailableError(f"model {name} is not available; available: {listed}", param="model")

    def _hub_spec(self, name: str) -> ModelSpec | None:
        from serve.models.hub import cached_spec  # the Hub client is only needed for hf:// names

        spec = parse_hub_spec(name)  # the name alone: a malformed spec is a 400 that reveals nothing
        return spec if self.allow_pull else cached_spec(spec)

    def _local_spec(self, name: str) -> ModelSpec | None:
        if self.models_dir is None:
            return None
        given = self.models_dir_given
        if given is not None and PurePath(name).is_relative_to(given):
            name = str(PurePath(name).relative_to(given))
        path = path_inside(self.models_dir, name)
        return None if path is None else resolve_model(str(path), self.catalog)


def path_inside(root: Path, name: str) -> Path | None:
    """The file `name` (relative to `root`, or absolute under it) names, if it is inside `root` once every
    symbolic link is followed; else None. Nothing outside `root` is opened or stat'ed: `..` above it and a
    link whose target leaves it end the walk before the target is looked at. `root` must be resolved."""
    wanted = PurePath(name)
    if wanted.is_absolute():
        if not wanted.is_relative_to(root):
            return None
        wanted = wanted.relative_to(root)
    current, parts, hops = root, list(wanted.parts), 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if current == root:
                return None
            current = current.parent  # `current` has no links in it, so its parent is the real one
            continue
        candidate = current / part
        try:
            is_link = stat.S_ISLNK(os.lstat(candidate).st_mode)  # inside root: every step so far was
            target = PurePath(os.readlink(candidate)) if is_link else None
        except (OSError, ValueError):  # missing, or a name the OS refuses (NUL byte, too long)
            return None
        if target is None:
            current = candidate
            continue
        hops += 1
        if hops > MAX_SYMLINK_HOPS:
            return None
        if target.is_absolute():
            if not target.is_relative_to(root):
                return None
            current, target = root, target.relative_to(root)
        parts = [*target.parts, *parts]
    return current if current != root else None
