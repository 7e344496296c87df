"""open_buildings.geo."""
