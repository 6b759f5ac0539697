# Sourced by the mongo image's entrypoint on the first start (a temporary
# server without --auth/--replSet): the catalog service's user, and the one
# Debezium reads change streams with.  `mongo` and `_js_escape` are the
# entrypoint's.
"${mongo[@]}" admin <<-EOJS
	db.getSiblingDB('product_service_db').createUser({
		user: 'product_service',
		pwd: $(_js_escape "${MSDB_MONGO_CATALOG_PASSWORD:?}"),
		roles: [{role: 'readWrite', db: 'product_service_db'}]
	});
	db.getSiblingDB('admin').createUser({
		user: 'debezium',
		pwd: $(_js_escape "${MSDB_MONGO_DEBEZIUM_PASSWORD:?}"),
		roles: [{role: 'read', db: 'product_service_db'}, {role: 'read', db: 'local'},
		        {role: 'read', db: 'config'}, {role: 'clusterMonitor', db: 'admin'}]
	});
EOJS
