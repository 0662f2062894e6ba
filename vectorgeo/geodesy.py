"""Distances and destinations on the sphere (mean Earth radius).

Shared by the raster module (ground size of pixels in any CRS) and the pair
sampler (neighbour placement), so both use one Earth.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["EARTH_RADIUS_M", "HALF_CIRCUMFERENCE_KM", "haversine_m", "destination_points"]

EARTH_RADIUS_M = 6_371_008.8
"""Mean Earth radius (IUGG), metres."""

HALF_CIRCUMFERENCE_KM = math.pi * EARTH_RADIUS_M / 1000
"""The farthest two points on the sphere can be apart (km): the largest radius a filter can need."""


def haversine_m(lat1: np.ndarray, lng1: np.ndarray, lat2: np.ndarray, lng2: np.ndarray) -> np.ndarray:
    """Great-circle distance in metres between points given in degrees."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(np.asarray(lng2) - np.asarray(lng1))
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def destination_points(
    lat: np.ndarray, lng: np.ndarray, bearing_rad: np.ndarray, distance_m: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Great-circle destinations from points, bearings and distances.

    Args:
        lat: Start latitudes, degrees.
        lng: Start longitudes, degrees.
        bearing_rad: Initial bearings, radians clockwise from north.
        distance_m: Distances along the sphere, metres.

    Returns:
        ``(lat, lng)`` of the destinations, degrees, longitudes in [-180, 180).
    """
    phi1, lam1 = np.radians(lat), np.radians(lng)
    delta = np.asarray(distance_m) / EARTH_RADIUS_M
    sin_phi2 = np.sin(phi1) * np.cos(delta) + np.cos(phi1) * np.sin(delta) * np.cos(bearing_rad)
    phi2 = np.arcsin(np.clip(sin_phi2, -1.0, 1.0))
    lam2 = lam1 + np.arctan2(
        np.sin(bearing_rad) * np.sin(delta) * np.cos(phi1), np.cos(delta) - np.sin(phi1) * sin_phi2
    )
    return np.degrees(phi2), (np.degrees(lam2) + 180.0) % 360.0 - 180.0
