"""A feature set as one training run reads it: ``FeatureBundle``.

Content features aligned to a catalog's item index (modality -> (I, D) float32 tensor),
with a mask of the items that have their own feature and where the rows came from
(snapshot, encoder fingerprint, random-init weights), so a run record can say so.
:mod:`pipeline.features.load` builds one from the store; training consumes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from torch import Tensor


@dataclass(frozen=True)
class FeatureBundle:
    """Content features aligned to a catalog's item index, as one training run reads them,
    with where they came from (so the run record can say so)."""

    features: dict[str, Tensor]  # modality -> (I, D) float32
    masks: dict[str, Tensor]  # modality -> (I,) bool: True where the item has its own feature
    snapshots: dict[str, str]  # modality -> feature-store snapshot id the rows came from
    fingerprints: dict[str, str] = field(default_factory=dict)  # modality -> encoder fingerprint
    random_init: dict[str, bool] = field(default_factory=dict)  # modality -> encoder weights were random

    @classmethod
    def empty(cls) -> "FeatureBundle":
        return cls({}, {}, {})

    @property
    def modalities(self) -> list[str]:
        return sorted(self.features)

    def subset(self, modalities: Iterable[str]) -> "FeatureBundle":
        """The same features restricted to ``modalities`` (ablations, rebuilding a run)."""
        mods = [m for m in modalities if m in self.features]

        def pick(d: Mapping[str, Any]) -> dict[str, Any]:
            return {m: d[m] for m in mods if m in d}

        return FeatureBundle(
            pick(self.features), pick(self.masks), pick(self.snapshots), pick(self.fingerprints), pick(self.random_init)
        )

    def provenance(self) -> dict[str, dict[str, Any]]:
        """modality -> {snapshot, fingerprint, random_init}: what a run record keeps."""
        return {
            m: {
                "snapshot": self.snapshots.get(m),
                "fingerprint": self.fingerprints.get(m),
                "random_init": bool(self.random_init.get(m, False)),
            }
            for m in self.modalities
        }
