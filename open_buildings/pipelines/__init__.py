"""open_buildings.pipelines."""
