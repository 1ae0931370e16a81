"""Suite files reproducing the paper, and performance benchmarks."""
