// Least privilege on the registry database: only the registry writes; agents only read.
const db = db.getSiblingDB("edgebatch");
db.createUser({ user: "registry", pwd: process.env.REGISTRY_DB_PASSWORD, roles: [{ role: "readWrite", db: "edgebatch" }] });
db.createUser({ user: "agent", pwd: process.env.AGENT_DB_PASSWORD, roles: [{ role: "read", db: "edgebatch" }] });
