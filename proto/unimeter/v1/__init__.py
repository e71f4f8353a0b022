"""Generated stubs of unimeter.v1 (make proto); the .proto files are the contract."""
