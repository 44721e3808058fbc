import JsSIP from 'jssip'; // in a page without a bundler: <script src="/vendor/jssip.min.js">
import { CONTENT_TYPE, EVENT, ConferenceListState } from './conflist.js';

/** Signs in, subscribes, and calls `onList(conferences, changed)` after every document. */
export function watchWithJsSIP({ wsUrl, user, password, onList, onError }) {
  const ua = new JsSIP.UA({
    sockets: [new JsSIP.WebSocketInterface(wsUrl)],
    uri: user, // 'sip:alice@example.com'
    password, // or: authorization_jwt: 'Bearer ' + token
    register: false, // the service takes SUBSCRIBE only (a REGISTER gets 405)
  });
  const list = new ConferenceListState();
  let current;
  const subscribe = () => {
    const subscriber = ua.subscribe(user, EVENT, CONTENT_TYPE, { expires: 600 });
    current = subscriber;
    subscriber.on('notify', (isFinal, request, body) => {
      if (!body) return;
      const r = list.apply(body);
      if (r.kind === 'applied') onList(r.conferences, r.changed);
      else if (r.kind === 'gap') {
        subscriber.terminate(); // a missed update: start over, the first document is full
        subscribe();
      } else onError(r.error);
    });
    subscriber.on('terminated', (code, reason) => {
      if (code === subscriber.C.SUBSCRIBE_AUTHENTICATION_FAILED) onError(new Error('wrong password'));
      else if (reason === 'deactivated') subscribe(); // a server went away: subscribe again
    });
    subscriber.subscribe();
  };
  ua.on('connected', subscribe); // also after JsSIP reconnects
  ua.start();
  return async () => {
    if (current && current.state !== current.C.STATE_TERMINATED) {
      const ended = new Promise((resolve) => current.once('terminated', resolve));
      current.terminate(); // unsubscribe; the final NOTIFY ends it (and JsSIP's refresh timer)
      await ended;
    }
    ua.stop();
  };
}
