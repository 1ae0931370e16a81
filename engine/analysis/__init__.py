"""Reading results back: the Parquet table, statistics, summaries and the HTML report."""
