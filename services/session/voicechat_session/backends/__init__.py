"""One interface per pipeline stage; implementations are chosen from settings and imported lazily."""
