"""Figures per patient: each test volume's Dice and HD95 for the baseline and the exported model.

Read from the export's ``per_volume`` record (:mod:`autosculpt.search.training.metrics`), worst
volume (lowest mean Dice of the exported model) first; nothing before an export.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._values import as_dict, finite


@dataclass(frozen=True)
class PatientRow:
    """One volume: per structure (baseline, exported) Dice and HD95 (None where undefined)."""

    volume: str
    dice: dict[str, tuple[float | None, float | None]]
    hd95: dict[str, tuple[float | None, float | None]]
    mean_dice: float | None


@dataclass(frozen=True)
class PatientsInfo:
    """Rows worst first, the structures, means and stds over volumes, HD95's unit, or why none."""

    structures: list[str]
    rows: list[PatientRow]
    summary: dict[str, dict[str, dict]]
    unit: str
    reason: str | None


def get_patients_info(export: dict) -> PatientsInfo:
    record = as_dict(export.get("per_volume"))
    volumes = [as_dict(v) for v in record.get("volumes", []) if isinstance(v, dict)]
    if not volumes:
        return PatientsInfo([], [], {}, "mm", "Per-patient figures appear once a model is exported.")
    structures = list(as_dict(as_dict(volumes[0].get("exported")).get("dice")))
    rows = sorted((_row(v, structures) for v in volumes), key=lambda r: (r.mean_dice is None, r.mean_dice or 0.0))
    summary = {side: as_dict(record.get(side)) for side in ("baseline", "exported")}
    return PatientsInfo(structures, rows, summary, str(record.get("unit", "mm")), None)


def _row(volume: dict, structures: list[str]) -> PatientRow:
    sides = [as_dict(volume.get(side)) for side in ("baseline", "exported")]

    def pair(metric: str, name: str) -> tuple[float | None, float | None]:
        base, exported = (finite(as_dict(side.get(metric)).get(name)) for side in sides)
        return base, exported

    return PatientRow(
        volume=str(volume.get("volume", "?")),
        dice={name: pair("dice", name) for name in structures},
        hd95={name: pair("hd95", name) for name in structures},
        mean_dice=finite(sides[1].get("mean_dice")),
    )
