"""Helpers shared by several stages (params, atomic IO, tracking, images, faces)."""
