"""The stage cache: content-addressed Zarr stores, one per stage output."""

from .keys import canonical_json, stage_key
from .store import CacheEntry, StageCache

__all__ = ["CacheEntry", "StageCache", "canonical_json", "stage_key"]
