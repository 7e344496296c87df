"""open_buildings.models."""
