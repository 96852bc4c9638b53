"""RAPL: the energy the CPU packages used, from Linux's powercap counters, around measured runs.

``tandem profile`` measures a machine's active power (``power_w`` of the profile) with these
counters where the platform has them: ``/sys/class/powercap/intel-rapl:<n>/energy_uj`` (also
written by AMD's RAPL driver under the same name), read before and after the profile's runs.
Each counter counts microjoules and wraps at its zone's ``max_energy_range_uj``; a reading
smaller than the one before is one wrap.

The package zones (``intel-rapl:<n>``, whose ``name`` is ``package-<n>``) are summed; their
sub-zones (``intel-rapl:<n>:<m>``: cores, uncore, DRAM) are parts of them and are not counted
again. A ``psys`` zone, where a platform has one, covers the whole SoC and overlaps the packages,
so it is used only when there is no package zone.

Anything that stops a reading — no powercap tree (not Linux, a VM, a container without
``/sys``), a counter only root may read (kernels since 5.10 restrict ``energy_uj``), a garbled
file — makes ``read_energy`` return None and the caller fall back to a documented default:
this is a measurement that helps where it exists, never a reason to fail.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

POWERCAP = Path("/sys/class/powercap")
"""Where Linux exposes the powercap zones."""


@dataclass(frozen=True)
class Zone:
    """One RAPL zone: its counter file and the value at which the counter wraps."""

    name: str
    energy_path: Path
    max_energy_uj: int


@dataclass(frozen=True)
class Reading:
    """The counters of ``zones`` at one instant, microjoules."""

    zones: tuple[Zone, ...]
    energy_uj: tuple[int, ...]


def rapl_zones(root: Path = POWERCAP) -> tuple[Zone, ...]:
    """The zones to sum (see the module docstring); empty when there are none to read."""
    try:
        tops = sorted(p for p in root.glob("intel-rapl:*") if p.name.count(":") == 1)
    except OSError:
        return ()
    zones = []
    for path in tops:
        try:
            name = (path / "name").read_text(encoding="ascii").strip()
            max_uj = int((path / "max_energy_range_uj").read_text(encoding="ascii").strip())
        except (OSError, ValueError, UnicodeDecodeError):
            continue
        zones.append(Zone(name, path / "energy_uj", max_uj))
    packages = tuple(z for z in zones if z.name.startswith("package"))
    if packages:
        return packages
    return tuple(z for z in zones if z.name == "psys")[:1]


def read_energy(root: Path = POWERCAP) -> Reading | None:
    """Every zone's counter now, or None where they cannot all be read (no RAPL, no
    permission, a garbled file)."""
    zones = rapl_zones(root)
    if not zones:
        return None
    values = []
    for zone in zones:
        try:
            values.append(int(zone.energy_path.read_text(encoding="ascii").strip()))
        except PermissionError:
            log.info("RAPL counters need root here", extra={"path": str(zone.energy_path)})
            return None
        except (OSError, ValueError, UnicodeDecodeError):
            return None
    return Reading(zones, tuple(values))


def joules_between(before: Reading, after: Reading) -> float:
    """Energy used between two readings of the same zones, counting one wrap per zone."""
    total_uj = 0
    for zone, a, b in zip(before.zones, before.energy_uj, after.energy_uj, strict=True):
        delta = b - a
        if delta < 0:  # the counter passed max_energy_range_uj and started again from 0
            delta += zone.max_energy_uj
        total_uj += delta
    return total_uj / 1e6
