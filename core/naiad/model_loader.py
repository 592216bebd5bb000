"""The config pipeline: from a model name to a :class:`LoadPlan` of READY versions.

Worker-thread side (blocking: file and network I/O, backend ``auto_complete``, instance loads).
:meth:`ModelLoader.prepare` finds the model in the repositories (fetching it from a remote one
first), reads its config (or takes the load request's override), fills platform and backend,
normalizes, auto-completes, validates, reads labels, and builds every selected version: its
instances (:class:`~naiad.instance_factory.InstanceFactory`) and its scheduler. Nothing here
touches the registry; the caller installs the plan on the loop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import isolation, repository
from .backend import InferenceBackend
from .config import (
    ConfigError,
    ModelConfig,
    fill_platform_backend,
    is_ensemble,
    normalize_model_config,
    parse_model_config,
    select_versions,
    validate_model_config,
)
from .errors import ModelLoadError, RepositoryPollError
from .instance_factory import InstanceFactory
from .overrides import check_relative_file
from .plugins import BackendRegistry
from .registry import ModelState, ModelVersion
from .remote import RemoteRepositories
from .scheduling import build_scheduler
from .scheduling.ensemble import EnsembleScheduler
from .signature import Signature

if TYPE_CHECKING:
    from .registry import ModelRegistry

log = logging.getLogger(__name__)

__all__ = ["LoadPlan", "ModelLoader"]


@dataclass(eq=False)
class LoadPlan:
    """A model fully prepared off the loop: config settled, versions built and READY."""

    config: ModelConfig
    versions: dict[int, ModelVersion]


class ModelLoader:
    """Prepares models (worker thread); see the module docstring for the steps."""

    def __init__(
        self,
        repositories: list[Path],
        remotes: RemoteRepositories,
        backends: BackendRegistry,
        instances: InstanceFactory,
        registry: ModelRegistry,
        *,
        auto_complete: bool = True,
        gpu_count: int = 0,
    ) -> None:
        self.repositories = repositories
        self.remotes = remotes
        self.backends = backends
        self.instances = instances
        #: what an ensemble's scheduler resolves its composing models from
        self.registry = registry
        self.auto_complete = auto_complete
        self.gpu_count = gpu_count

    def prepare(
        self, name: str, override: ModelConfig | None, source_path: Path | None
    ) -> LoadPlan:
        """Every selected version of ``name``, built and loaded. ``source_path`` is a folder
        written from a load request's files (used instead of the repositories)."""
        source = self._find(name, source_path)
        config = self._read_config(source, override)
        _check_file_fields(config)
        available = repository.version_numbers(source.path)
        if not available:
            raise ModelLoadError(f"at least one version must be available under {source.path}")
        fill_platform_backend(config, source.path / str(available[-1]))
        if is_ensemble(config):
            return self._prepare_ensemble(config, source, available)
        backend_cls = self.backends.find(config.platform, config.backend)
        self._normalize(config, name, backend_cls)
        selected = select_versions(config.version_policy, available)
        if not selected:
            raise ModelLoadError(f"no version is available for model '{name}'")
        mode = isolation.isolation_mode(config, backend_cls, source.path / str(selected[-1]))
        env = isolation.execution_env(config, source.path, mode)
        if self.auto_complete:
            isolation.auto_complete(backend_cls, mode, config, source.path / str(selected[-1]), env)
            self._normalize(config, name, backend_cls)
        validate_model_config(config)
        signature = Signature.from_config(config)
        labels = _labels(config, source)
        versions: dict[int, ModelVersion] = {}
        try:
            for v in selected:
                versions[v] = self._build_version(
                    backend_cls, config, source, v, signature, labels, mode, env
                )
        except BaseException:
            for mv in versions.values():
                self.instances.release(mv.instances)
            raise
        return LoadPlan(config, versions)

    def _find(self, name: str, source_path: Path | None) -> repository.ModelSource:
        """The model's folder: a load request's own, or the first repository that has it (a
        remote one's objects fetched into its cache folder first; never a stale cache)."""
        if source_path is not None:
            return repository.ModelSource(name, source_path, source_path.parent)
        remote_errors = self.remotes.fetch(name) if self.remotes else {}
        found = repository.find_model(self.repositories, name)
        if found is None or found.repository in remote_errors:
            if remote_errors:
                raise ModelLoadError("; ".join(remote_errors.values()))
            raise RepositoryPollError()
        if remote_errors:
            log.warning("model '%s' loads from %s; %s", name, found.repository, remote_errors)
        return found

    def _normalize(
        self, config: ModelConfig, name: str, backend_cls: type[InferenceBackend]
    ) -> None:
        normalize_model_config(
            config,
            model_name=name,
            default_instance_count=backend_cls.default_instance_count,
            gpu_count=self.gpu_count,
        )

    def _prepare_ensemble(
        self, config: ModelConfig, source: repository.ModelSource, available: list[int]
    ) -> LoadPlan:
        """An ensemble: no backend and no instances, an :class:`EnsembleScheduler` per version.
        The checks against the composing models follow on the loop (:class:`EnsembleLinker`)."""
        normalize_model_config(config, model_name=source.name, gpu_count=self.gpu_count)
        selected = select_versions(config.version_policy, available)
        if not selected:
            raise ModelLoadError(f"no version is available for model '{source.name}'")
        validate_model_config(config)
        signature = Signature.from_config(config)
        versions: dict[int, ModelVersion] = {}
        for v in selected:
            mv = ModelVersion(source.name, v, ModelState.READY, "", config, signature)
            mv.labels = _labels(config, source)
            mv.scheduler = EnsembleScheduler(config, self.registry, mv.stats, signature)
            versions[v] = mv
        return LoadPlan(config, versions)

    def _read_config(
        self, source: repository.ModelSource, override: ModelConfig | None
    ) -> ModelConfig:
        if override is not None:
            config = ModelConfig()
            config.CopyFrom(override)
            return config
        text = repository.read_config_text(source)
        if text is None:
            if not self.auto_complete:
                raise ConfigError(
                    f"failed to read model configuration {source.config_path}: file not found "
                    "(auto-complete is disabled)"
                )
            return ModelConfig()
        return parse_model_config(text, model_name=source.name)

    def _build_version(
        self,
        backend_cls: type[InferenceBackend],
        config: ModelConfig,
        source: repository.ModelSource,
        version: int,
        signature: Signature,
        labels: dict[str, list[str]],
        mode: str,
        env: dict[str, str] | None,
    ) -> ModelVersion:
        instances = self.instances.build(
            backend_cls, config, source.path, version, signature, mode, env
        )
        mv = ModelVersion(source.name, version, ModelState.READY, "", config, signature)
        mv.instances = instances
        mv.labels = labels
        try:
            mv.scheduler = build_scheduler(config, instances, mv.stats, signature)
        except BaseException:
            self.instances.release(instances)  # loaded but never served
            raise
        return mv


def _labels(config: ModelConfig, source: repository.ModelSource) -> dict[str, list[str]]:
    """output name -> its ``label_filename``'s lines."""
    return {
        out.name: repository.read_labels(source.path, out.label_filename)
        for out in config.output
        if out.label_filename
    }


def _check_file_fields(config: ModelConfig) -> None:
    """A config (from disk or from a load request) names files only inside the model folder."""
    if config.default_model_filename:
        check_relative_file(config.default_model_filename, "default_model_filename")
    for filename in config.cc_model_filenames.values():
        check_relative_file(filename, "cc_model_filenames entry")
    for out in config.output:
        if out.label_filename:
            check_relative_file(out.label_filename, "label_filename")
