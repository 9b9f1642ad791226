import { fail, ok, type Check, type DoctorDeps } from './check';

export function checkPrivileges(d: DoctorDeps): Check {
  return d.isRoot()
    ? ok('privileges', 'running with CAP_NET_ADMIN (root)')
    : fail(
        'privileges',
        'not root and no CAP_NET_ADMIN: transgate cannot install rules, and most checks below cannot look',
        'run as root: sudo -E npx transgate doctor (-E keeps http_proxy)',
      );
}
