"""Fleets of hosts: fingerprints gathered from many snapshots, analysed on Dask."""
