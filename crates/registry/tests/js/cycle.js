// A full eureka-js-client cycle against a registry on 127.0.0.1:<port>:
// register, renew (short intervals), fetch the registry (full, then deltas), see
// itself, de-register. Prints one JSON event per line on stdout; exits 0 only if
// every step happened, 1 with a reason otherwise (or after 30 s).
'use strict';

const { Eureka } = require('eureka-js-client');

const port = Number(process.argv[2]);
const app = process.argv[3] || 'jsapp';
const emit = (event, extra) => console.log(JSON.stringify(Object.assign({ event }, extra || {})));
const fail = (why) => {
  emit('failed', { why: String(why) });
  process.exit(1);
};
setTimeout(() => fail('timed out after 30 s'), 30000).unref();

// Client logs go to stderr so that stdout holds only events.
const log = (level) => (...args) => process.stderr.write(`[${level}] ${args.map(String).join(' ')}\n`);
const logger = { error: log('error'), warn: log('warn'), info: log('info'), debug: () => {}, level: () => {} };

const client = new Eureka({
  logger,
  shouldUseDelta: true,
  instance: {
    app,
    instanceId: `${app}-1`,
    hostName: 'localhost',
    ipAddr: '127.0.0.1',
    statusPageUrl: 'http://localhost:7070/info',
    port: { $: 7070, '@enabled': true },
    vipAddress: `${app}.vip`,
    dataCenterInfo: { '@class': 'com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo', name: 'MyOwn' },
    leaseInfo: { renewalIntervalInSecs: 1, durationInSecs: 10 },
    metadata: { runtime: 'node' },
  },
  eureka: {
    host: '127.0.0.1',
    port,
    servicePath: '/eureka/v2/apps/',
    heartbeatInterval: 200,
    registryFetchInterval: 200,
    maxRetries: 0,
  },
});

let heartbeats = 0;
let fetches = 0;
client.on('registered', () => emit('registered'));
client.on('heartbeat', () => {
  heartbeats += 1;
});
client.on('registryUpdated', () => {
  fetches += 1;
});

client.start((err) => {
  if (err) fail(`start: ${err}`);
  emit('started');
  const check = setInterval(() => {
    const byApp = client.getInstancesByAppId(app.toUpperCase());
    const byVip = client.getInstancesByVipAddress(`${app}.vip`);
    // Wait for a few heartbeats and for delta fetches after the first full one.
    if (heartbeats < 3 || byApp.length !== 1 || byVip.length !== 1 || !client.hasFullRegistry) return;
    clearInterval(check);
    const me = byApp[0];
    emit('sees_self', {
      heartbeats,
      fullFetches: fetches,
      instanceId: me.instanceId,
      status: me.status,
      port: me.port.$,
      metadata: me.metadata,
    });
    // Let at least two delta fetches run against the server before stopping.
    setTimeout(() => {
      client.stop((stopErr) => {
        if (stopErr) fail(`stop: ${stopErr}`);
        emit('deregistered', { heartbeats });
        process.exit(0);
      });
    }, 500);
  }, 50);
});
