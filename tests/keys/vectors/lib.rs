// Empty: see Cargo.toml. Only the dependency's data files are used.
