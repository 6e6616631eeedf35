# Simple example remote service. The loader will call a method to
# realize the services associated with a specific service name.
# All services must subclass RemoteServiceScript.
#
from nexus_remote_service import RemoteServiceScript
import subprocess
import time
# Launch a vnc server (tightvnc) and run an optional command in the token json map file
class SimpleVNC(RemoteServiceScript):
    def __init__(self, *args, **kwargs):
        super(SimpleVNC, self).__init__(*args, **kwargs)
    def display_base(self):
        return self._common_options.get("display_base", 100)
    def start(self, token, timestamp=time.time(), options=dict()):
        username = options.get('username', '')
        size = options.get('size', '1600x1200')
        cmd = ["vncserver", "-depth", "24", "-geometry", size, ":"+str(self.display_base()+self._index)]
        try:
            print("SimpleVNC start: {} {}".format(self, cmd))
            code = subprocess.call(cmd)
            if code != 0:
                return False
        except:
            return False
        self.set_host_port("localhost", 5900+self._index+self.display_base())
        return super(SimpleVNC, self).start(token, timestamp=timestamp, options=options)
    def stop(self):
        cmd = ["vncserver", "-kill", ":"+str(self.display_base()+self._index)]
        try:
            print("SimpleVNC stop: {} {}".format(self, cmd))
            code = subprocess.call(cmd)
        except:
            pass
        return super(SimpleVNC, self).stop()
def realize_service(name="", count=1, index=0, common_options=dict()):
    print("Realizing SimpleVNC service: {} {} {} {}".format(name, count, index, common_options))
    return SimpleVNC(name, count=count, index=index, common_options=common_options)
