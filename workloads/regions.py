"""Cloud regions -> the user areas that inference specs name (``us``, ``europe``, ``asia``).

Covers AWS (``us-east-1``, ``ap-southeast-2``), GCP (``europe-west4``,
``northamerica-northeast1``), Azure (``westeurope``, ``japaneast``) and zones of them
(``us-east-1a``, ``us-central1-b``). An area name, or a common short form, maps to itself.
"""

from __future__ import annotations

AREAS: tuple[str, ...] = (
    "us",
    "canada",
    "latin-america",
    "europe",
    "middle-east",
    "africa",
    "asia",
    "oceania",
)

_AREA_ALIASES: dict[str, str] = {
    "eu": "europe",
    "emea": "europe",
    "ca": "canada",
    "latam": "latin-america",
    "south-america": "latin-america",
    "southamerica": "latin-america",
    "sa": "latin-america",
    "me": "middle-east",
    "middleeast": "middle-east",
    "af": "africa",
    "apac": "asia",
    "ap": "asia",
    "au": "oceania",
    "australia": "oceania",
}

# Region-name prefixes, longest first wins. Where a prefix covers two areas (AWS's
# ap-southeast-2 is Sydney, ap-southeast-1 Singapore), the exact region is listed.
_PREFIXES: dict[str, str] = {
    # AWS
    "us-gov-": "us",
    "us-": "us",
    "ca-": "canada",
    "mx-": "latin-america",
    "sa-": "latin-america",
    "eu-": "europe",
    "il-": "middle-east",
    "me-": "middle-east",
    "af-": "africa",
    "ap-southeast-2": "oceania",
    "ap-southeast-4": "oceania",
    "ap-southeast-6": "oceania",
    "ap-": "asia",
    "cn-": "asia",
    # GCP
    "northamerica-south": "latin-america",
    "northamerica-": "canada",
    "southamerica-": "latin-america",
    "europe-": "europe",
    "asia-": "asia",
    "australia-": "oceania",
    "africa-": "africa",
    # Azure (no dashes: eastus, westeurope, australiaeast, ...)
    "eastus": "us",
    "westus": "us",
    "centralus": "us",
    "northcentralus": "us",
    "southcentralus": "us",
    "westcentralus": "us",
    "usgov": "us",
    "canada": "canada",
    "brazil": "latin-america",
    "mexico": "latin-america",
    "chile": "latin-america",
    "northeurope": "europe",
    "westeurope": "europe",
    "uk": "europe",
    "france": "europe",
    "germany": "europe",
    "switzerland": "europe",
    "norway": "europe",
    "sweden": "europe",
    "poland": "europe",
    "italy": "europe",
    "spain": "europe",
    "austria": "europe",
    "belgium": "europe",
    "denmark": "europe",
    "finland": "europe",
    "uae": "middle-east",
    "qatar": "middle-east",
    "israel": "middle-east",
    "saudi": "middle-east",
    "southafrica": "africa",
    "eastasia": "asia",
    "southeastasia": "asia",
    "japan": "asia",
    "korea": "asia",
    "centralindia": "asia",
    "southindia": "asia",
    "westindia": "asia",
    "jioindia": "asia",
    "indonesia": "asia",
    "malaysia": "asia",
    "taiwan": "asia",
    "australia": "oceania",
    "newzealand": "oceania",
}
_ORDERED = sorted(_PREFIXES.items(), key=lambda item: -len(item[0]))


def area_of(region: str) -> str | None:
    """The user area of a cloud region or zone, or of an area name; None if unknown."""
    key = region.strip().lower().replace("_", "-")
    if key in AREAS:
        return key
    if key in _AREA_ALIASES:
        return _AREA_ALIASES[key]
    for prefix, area in _ORDERED:
        if key.startswith(prefix):
            return area
    return None
