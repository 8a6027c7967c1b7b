"""The schema revisions, oldest first by their numbered ids."""
