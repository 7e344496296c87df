"""open_buildings.training."""
