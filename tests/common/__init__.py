"""What every stage shares: the sharded HDF5 row store."""
