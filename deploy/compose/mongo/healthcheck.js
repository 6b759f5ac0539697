// Healthcheck of the mongo service: initiate the one-node replica set if it is
// not yet (code 94, NotYetInitialized), healthy once this member is PRIMARY.
var s = db.adminCommand({replSetGetStatus: 1});
if (!s.ok && s.code === 94) {
    rs.initiate({_id: "rs0", members: [{_id: 0, host: "mongo:27017"}]});
}
s = db.adminCommand({replSetGetStatus: 1});
quit(s.ok && s.myState === 1 ? 0 : 1);
