"""Which version directories a ``version_policy`` serves (Triton's ``VersionsToLoad``)."""

from __future__ import annotations

from collections.abc import Iterable

from .model_config_pb2 import ModelVersionPolicy


def select_versions(policy: ModelVersionPolicy, available: Iterable[int]) -> list[int]:
    """The versions of ``available`` that ``policy`` serves, in ascending order.

    - ``latest { num_versions: n }``: the ``n`` numerically greatest versions (none if ``n`` is 0);
    - ``all {}``: every available version;
    - ``specific { versions: [...] }``: the listed versions that are available (Triton logs the
      missing ones and loads the rest; see :func:`missing_versions`).

    A policy with no choice set is treated as ``all``, like Triton (normalisation always sets
    ``latest { num_versions: 1 }`` first, so this only matters for un-normalised configs).
    """
    existing = sorted(set(available))
    choice = policy.WhichOneof("policy_choice")
    if choice == "latest":
        count = policy.latest.num_versions
        return existing[len(existing) - count :] if count > 0 else []
    if choice == "specific":
        wanted = set(policy.specific.versions)
        return [v for v in existing if v in wanted]
    return existing


def missing_versions(policy: ModelVersionPolicy, available: Iterable[int]) -> list[int]:
    """The versions a ``specific`` policy lists that are not available (ascending).

    Triton logs "version N is specified for model 'm', but the version directory is not
    present" for each of these. Empty for the other policies.
    """
    if policy.WhichOneof("policy_choice") != "specific":
        return []
    present = set(available)
    return sorted({v for v in policy.specific.versions if v not in present})
