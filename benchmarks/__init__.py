"""thresher against its peers on the same data, in one run, printing one JSON line per comparison."""
