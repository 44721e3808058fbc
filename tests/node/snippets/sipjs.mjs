import { Subscriber, UserAgent } from 'sip.js';
import { CONTENT_TYPE, EVENT, ConferenceListState } from './conflist.js';

/** Signs in, subscribes, and calls `onList(conferences, changed)` after every document. */
export async function watchWithSipJs({ wsUrl, user, password, onList, onError }) {
  const uri = UserAgent.makeURI(user); // 'sip:alice@example.com'
  const ua = new UserAgent({
    uri,
    transportOptions: { server: wsUrl },
    authorizationUsername: uri.user,
    authorizationPassword: password,
    logLevel: 'error',
  });
  await ua.start();
  const list = new ConferenceListState();
  let subscriber;
  const subscribe = async () => {
    subscriber = new Subscriber(ua, uri, EVENT, {
      expires: 600,
      extraHeaders: [`Accept: ${CONTENT_TYPE}`], // or add 'Authorization: Bearer ' + token
    });
    subscriber.delegate = {
      onNotify(notification) {
        notification.accept();
        const r = list.apply(notification.request.body);
        if (r.kind === 'applied') onList(r.conferences, r.changed);
        else if (r.kind === 'gap') subscriber.unsubscribe().then(subscribe); // start over: full document
        else onError(r.error);
      },
    };
    await subscriber.subscribe();
  };
  await subscribe();
  return async () => {
    await subscriber.unsubscribe();
    await ua.stop();
  };
}
