"""open_buildings.evaluation."""
