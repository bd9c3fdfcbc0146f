"""Hub-side services shared by the spawners: the catalog in force and live usage."""
