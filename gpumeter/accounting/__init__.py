"""Accounting: energy per GPU and process, prices, books per workload; pure logic."""
