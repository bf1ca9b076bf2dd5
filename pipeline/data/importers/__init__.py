"""Catalog importers: one per source format, in an explicit registry.

=========================  ==================================================  =====================
name                       reads                                               known dataset folder
=========================  ==================================================  =====================
movielens-100k-posters     ml-100k/u.data + items.csv + posters/{id}.jpg       movielens-100k-posters
amazon-baby-5core          train/val/test.json + user2id/item2id.json          amazon-baby-5core
mmrec                      <name>.inter + image_feat.npy + text_feat.npy       (``folder=`` option)
generic                    item table + interaction table + image folder       (``items=``... options)
=========================  ==================================================  =====================

Use :func:`pipeline.data.ingest.ingest` to run one and store the result; call an importer
directly (``IMPORTERS["generic"](items=..., interactions=...)``) to get the
:class:`ImportResult` in memory without writing anything.
"""

from pipeline.data.importers.amazon import AmazonBabyImporter
from pipeline.data.importers.base import ImportedFeatures, Importer, ImporterOptions, ImportResult
from pipeline.data.importers.generic import GenericImporter
from pipeline.data.importers.mmrec import MMRecImporter
from pipeline.data.importers.movielens import MovieLensImporter

IMPORTERS: dict[str, Importer] = {
    "movielens-100k-posters": MovieLensImporter(),
    "amazon-baby-5core": AmazonBabyImporter(),
    "mmrec": MMRecImporter(),
    "generic": GenericImporter(),
}


def get_importer(name: str) -> Importer:
    try:
        return IMPORTERS[name]
    except KeyError:
        raise ValueError(f"unknown importer {name!r}; known: {sorted(IMPORTERS)}") from None


__all__ = [
    "IMPORTERS",
    "AmazonBabyImporter",
    "GenericImporter",
    "ImportedFeatures",
    "ImportResult",
    "Importer",
    "ImporterOptions",
    "MMRecImporter",
    "MovieLensImporter",
    "get_importer",
]
